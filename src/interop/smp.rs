//! segmentation_models_pytorch's `UnetPlusPlus` with a ResNet encoder, under its own weight
//! names, so that its `state_dict` loads unchanged.
//!
//! smp builds the nested decoder on the encoder's five taps, deepest first: its block
//! `x_{d}_{l}` is our node `X^{i,j}` with `i = 3 − l`, `j = l − d + 1`. Each block up-samples
//! its input ×2 (nearest), concatenates it *first*, then the earlier nodes of its level in
//! descending order and the encoder tap last, and applies two 3×3 convolutions with
//! batch-norm and ReLU (no conv bias). Widths are not uniform per level: the outer diagonal
//! uses `decoder_channels`, the inner nodes the encoder's width. A last block `x_0_4` goes to
//! full resolution without a skip, and the head is one 3×3 convolution. There is no deep
//! supervision. Inputs must be multiples of 32.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::encoders::{ResNet, ResNetConfig, ResNetConfigBuilder};
use crate::model::MultiHeadSegmenter;
use crate::nested::Outputs;
use crate::nn::{Conv, ConvBn, ConvConfig, NamedTensor};
use crate::{weights, Error, Result};

/// Configuration of an smp `UnetPlusPlus` (encoder depth 5, batch-norm decoder): a preset
/// named after smp's `encoder_name` ([`Self::resnet34`], …), chained setters on the returned
/// [`SmpConfigBuilder`], then [`SmpConfigBuilder::build`]; or [`Self::detect`] from a
/// `state_dict`.
///
/// ```
/// use unetpp::interop::smp::SmpConfig;
/// let cfg = SmpConfig::resnet18().decoder_channels([32, 16, 8, 8, 4]).classes(2).build()?;
/// assert_eq!((cfg.encoder().in_channels(), cfg.classes()), (3, 2));
/// let err = cfg.to_builder().decoder_channels([32, 16, 0, 8, 4]).build().unwrap_err();
/// assert!(matches!(err, unetpp::Error::Config { field: "decoder_channels", .. }));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "SmpConfigBuilder"))]
pub struct SmpConfig {
    encoder: ResNetConfig,
    decoder_channels: [usize; 5],
    classes: usize,
}

/// Chained setters for an [`SmpConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SmpConfigBuilder {
    encoder: ResNetConfigBuilder,
    decoder_channels: [usize; 5],
    classes: usize,
}

impl SmpConfig {
    /// `encoder_name="resnet18"` on RGB images, smp's default decoder channels
    /// `(256, 128, 64, 32, 16)`, one class.
    pub fn resnet18() -> SmpConfigBuilder {
        SmpConfigBuilder::new(ResNetConfig::resnet18())
    }

    /// `encoder_name="resnet34"` (smp's default) on RGB images, smp's default decoder
    /// channels `(256, 128, 64, 32, 16)`, one class.
    pub fn resnet34() -> SmpConfigBuilder {
        SmpConfigBuilder::new(ResNetConfig::resnet34())
    }

    /// `encoder_name="resnet50"` on RGB images, smp's default decoder channels
    /// `(256, 128, 64, 32, 16)`, one class.
    pub fn resnet50() -> SmpConfigBuilder {
        SmpConfigBuilder::new(ResNetConfig::resnet50())
    }

    /// Reads the configuration from an smp `state_dict`'s shapes: the encoder (ResNet-50 has
    /// `conv3` in its blocks; ResNet-34 six blocks in `layer3`, ResNet-18 two), its input
    /// channels, the decoder channels and the classes.
    pub fn detect(tensors: &HashMap<String, Tensor>) -> Result<Self> {
        let dim = |name: &str, d: usize| {
            super::dim_of(tensors, "an smp UnetPlusPlus (ResNet encoder)", name, d)
        };
        let encoder = if tensors.contains_key("encoder.layer1.0.conv3.weight") {
            ResNetConfig::resnet50()
        } else if tensors.contains_key("encoder.layer3.5.conv1.weight") {
            ResNetConfig::resnet34()
        } else {
            ResNetConfig::resnet18()
        };
        let encoder = encoder.in_channels(dim("encoder.conv1.weight", 1)?);
        let mut decoder_channels = [0usize; 5];
        for (l, c) in decoder_channels.iter_mut().enumerate() {
            *c = dim(&format!("decoder.blocks.x_0_{l}.conv1.0.weight"), 0)?;
        }
        SmpConfigBuilder {
            encoder,
            decoder_channels,
            classes: dim("segmentation_head.0.weight", 0)?,
        }
        .build()
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> SmpConfigBuilder {
        SmpConfigBuilder {
            encoder: self.encoder.to_builder(),
            decoder_channels: self.decoder_channels,
            classes: self.classes,
        }
    }

    /// The encoder (`encoder_name`, `in_channels`).
    pub fn encoder(&self) -> &ResNetConfig {
        &self.encoder
    }

    /// `in_channels`: the encoder's image channels.
    pub fn in_channels(&self) -> usize {
        self.encoder.in_channels()
    }

    /// `decoder_channels`: five widths.
    pub fn decoder_channels(&self) -> [usize; 5] {
        self.decoder_channels
    }

    /// `classes`.
    pub fn classes(&self) -> usize {
        self.classes
    }
}

impl SmpConfigBuilder {
    fn new(encoder: ResNetConfigBuilder) -> Self {
        Self {
            encoder,
            decoder_channels: [256, 128, 64, 32, 16],
            classes: 1,
        }
    }

    /// The encoder (`encoder_name`, `in_channels`); smp's are torchvision's ResNets with
    /// trainable batch-norm of epsilon 1e-5.
    pub fn encoder(mut self, encoder: ResNetConfig) -> Self {
        self.encoder = encoder.to_builder();
        self
    }

    /// `in_channels`: the encoder's image channels (3 for ImageNet weights).
    pub fn in_channels(mut self, in_channels: usize) -> Self {
        self.encoder = self.encoder.in_channels(in_channels);
        self
    }

    /// `decoder_channels`: five widths, each at least 1 (smp's default
    /// `(256, 128, 64, 32, 16)`).
    pub fn decoder_channels(mut self, decoder_channels: [usize; 5]) -> Self {
        self.decoder_channels = decoder_channels;
        self
    }

    /// `classes`: output channels, at least 1.
    pub fn classes(mut self, classes: usize) -> Self {
        self.classes = classes;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field (the
    /// encoder's own fields, such as `in_channels`, by their names).
    pub fn build(self) -> Result<SmpConfig> {
        let encoder = self.encoder.build()?;
        if let Some(l) = self.decoder_channels.iter().position(|&c| c == 0) {
            return Err(Error::config(
                "decoder_channels",
                format!(
                    "every width must be at least 1, got {:?} (0 at {l})",
                    self.decoder_channels
                ),
            ));
        }
        if self.classes == 0 {
            return Err(Error::config("classes", "must be at least 1"));
        }
        Ok(SmpConfig {
            encoder,
            decoder_channels: self.decoder_channels,
            classes: self.classes,
        })
    }
}

built_by!(SmpConfig, SmpConfigBuilder);

/// Two of smp's `Conv2dReLU` with batch-norm (`conv{k}.0`, no bias, `conv{k}.1`, ReLU).
#[derive(Debug, Clone)]
struct DecoderBlock {
    conv1: ConvBn,
    conv2: ConvBn,
}

impl DecoderBlock {
    fn new(c_in: usize, skip: usize, c_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: conv_bn_relu(c_in + skip, c_out, vb.pp("conv1"))?,
            conv2: conv_bn_relu(c_out, c_out, vb.pp("conv2"))?,
        })
    }

    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let x = crate::ops::upsample_nearest2d(x, 2)?;
        let x = match skip {
            Some(s) => Tensor::cat(&[&x, s], 1)?,
            None => x,
        };
        self.conv2
            .forward(&self.conv1.forward(&x, train, true)?, train, true)
    }
}

/// smp's `Conv2dReLU` with batch-norm (PyTorch's defaults: epsilon 1e-5, trainable).
fn conv_bn_relu(c_in: usize, c_out: usize, vb: VarBuilder) -> Result<ConvBn> {
    ConvBn::new(c_in, c_out, 3, 1, (1e-5, false), vb.pp("0"), vb.pp("1"))
}

/// smp's `UnetPlusPlus` (see the module documentation).
#[derive(Debug, Clone)]
pub struct SmpUnetPlusPlus {
    cfg: SmpConfig,
    encoder: ResNet,
    blocks: HashMap<(usize, usize), DecoderBlock>,
    head: Conv,
    tensors: Vec<NamedTensor>,
}

/// Decoder depth: blocks `x_{d}_{l}` with `d ≤ l < DEPTH`, plus `x_0_{DEPTH}`.
const DEPTH: usize = 4;

impl SmpUnetPlusPlus {
    /// The network of `cfg` with weights from `vb` under smp's names (`encoder.*`,
    /// `decoder.blocks.x_{d}_{l}.conv{1,2}.{0,1}.*`, `segmentation_head.0.*`).
    pub fn new(cfg: &SmpConfig, vb: VarBuilder) -> Result<Self> {
        let ((encoder, blocks, head), tensors) = weights::record(vb, |vb| Self::layers(cfg, &vb))?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            blocks,
            head,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn layers(
        cfg: &SmpConfig,
        vb: &VarBuilder,
    ) -> Result<(ResNet, HashMap<(usize, usize), DecoderBlock>, Conv)> {
        let encoder = ResNet::new(&cfg.encoder, vb.pp("encoder"))?;
        let e = cfg.encoder.out_channels(); // taps at strides 2..32
        let dec = cfg.decoder_channels;
        // smp's lists, deepest first: the input widths, skip widths and output widths per layer.
        let head_ch = e[4];
        let in_ch = [head_ch, dec[0], dec[1], dec[2], dec[3]];
        let skip_ch = [e[3], e[2], e[1], e[0], 0];
        let vb_blocks = vb.pp("decoder").pp("blocks");
        let mut blocks = HashMap::new();
        for l in 0..DEPTH {
            for d in 0..=l {
                let (c_in, skip, c_out) = if d == 0 {
                    (in_ch[l], skip_ch[l] * (l + 1), dec[l])
                } else {
                    (skip_ch[l - 1], skip_ch[l] * (l + 1 - d), skip_ch[l])
                };
                blocks.insert(
                    (d, l),
                    DecoderBlock::new(c_in, skip, c_out, vb_blocks.pp(format!("x_{d}_{l}")))?,
                );
            }
        }
        blocks.insert(
            (0, DEPTH),
            DecoderBlock::new(
                in_ch[DEPTH],
                0,
                dec[DEPTH],
                vb_blocks.pp(format!("x_0_{DEPTH}")),
            )?,
        );
        let head = Conv::new(
            dec[DEPTH],
            cfg.classes,
            ConvConfig::same(3),
            vb.pp("segmentation_head").pp("0"),
        )?;
        Ok((encoder, blocks, head))
    }

    /// The configuration.
    pub fn config(&self) -> &SmpConfig {
        &self.cfg
    }

    fn block(&self, d: usize, l: usize) -> Result<&DecoderBlock> {
        self.blocks
            .get(&(d, l))
            .ok_or_else(|| Error::config("decoder", format!("no block x_{d}_{l}")))
    }

    /// Logits `(N, classes, H, W)`; `train` switches batch-norm to batch statistics. `H` and `W`
    /// must be multiples of 32.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4().map_err(|_| {
            Error::Shape(format!(
                "expected an (N, C, H, W) image batch, got {:?}",
                x.dims()
            ))
        })?;
        if h % 32 != 0 || w % 32 != 0 || h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "input is {h}x{w}; segmentation_models_pytorch's UnetPlusPlus needs multiples of 32"
            )));
        }
        let mut feats = self.encoder.features(x, train)?;
        feats.reverse(); // deepest first, as smp orders them
        let mut dense: HashMap<(usize, usize), Tensor> = HashMap::new();
        for l in 0..DEPTH {
            for d in 0..DEPTH - l {
                let out = if l == 0 {
                    self.block(d, d)?
                        .forward(&feats[d], Some(&feats[d + 1]), train)?
                } else {
                    let to = d + l;
                    let mut parts = Vec::with_capacity(l + 1);
                    for k in d + 1..=to {
                        parts.push(dense.get(&(k, to)).ok_or_else(|| {
                            Error::config(
                                "decoder",
                                format!("x_{k}_{to} read before it is computed"),
                            )
                        })?);
                    }
                    parts.push(&feats[to + 1]);
                    let skip = Tensor::cat(&parts, 1)?;
                    let prev = dense.get(&(d, to - 1)).ok_or_else(|| {
                        Error::config(
                            "decoder",
                            format!("x_{d}_{} read before it is computed", to - 1),
                        )
                    })?;
                    self.block(d, to)?.forward(prev, Some(&skip), train)?
                };
                dense.insert((d, d + l), out);
            }
        }
        let last = dense
            .get(&(0, DEPTH - 1))
            .ok_or_else(|| Error::config("decoder", "the last node is missing"))?;
        let y = self.block(0, DEPTH)?.forward(last, None, train)?;
        self.head.forward(&y)
    }

    /// Every tensor under smp's name (batch-norm statistics included, as buffers).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }

    /// Writes the network under smp's names so that `UnetPlusPlus.load_state_dict` takes it
    /// (each batch-norm's `num_batches_tracked` is written as 0).
    pub fn save_smp(&self, path: impl AsRef<Path>) -> Result<()> {
        let mut tensors = Vec::new();
        for t in self.named_tensors() {
            if let Some(bn) = t.name.strip_suffix(".running_var") {
                tensors.push((
                    format!("{bn}.num_batches_tracked"),
                    Tensor::new(0i64, t.tensor.device())?,
                ));
            }
            tensors.push((t.name, t.tensor));
        }
        weights::save_with_metadata(&tensors, None, path)
    }

    /// Inference logits in evaluation mode.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, false)
    }

    /// Builds the network of `cfg` from an smp `state_dict` (named tensors). The
    /// `num_batches_tracked` counters are skipped; a missing, extra or mis-shaped tensor is an
    /// [`Error::Weights`] naming it.
    pub fn from_smp(
        cfg: &SmpConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let kept = weights::without_bn_counters(tensors);
        weights::build_checked(kept, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// The network in `dtype` (`F16` or `BF16` for half-precision inference on devices that
    /// have it), its conversion recorded by autograd, as
    /// [`UNetPlusPlus::to_dtype`](crate::nested::UNetPlusPlus::to_dtype) does; `self` is
    /// untouched.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Input(format!(
                "SmpUnetPlusPlus::to_dtype needs a floating-point dtype, got {dtype:?}"
            )));
        }
        Self::new(
            &self.cfg,
            weights::var_builder_over_in(&self.tensors, dtype),
        )
    }

    /// [`Self::from_smp`] from a safetensors file.
    pub fn load_smp(cfg: &SmpConfig, path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        Self::from_smp(cfg, weights::load_tensors(path, device)?, device)
    }

    /// Loads a safetensors export of an smp `state_dict`, with the configuration read from
    /// its shapes ([`SmpConfig::detect`]).
    pub fn load_detected(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let tensors = weights::load_tensors(path, device)?;
        let cfg = SmpConfig::detect(&tensors)?;
        Self::from_smp(&cfg, tensors, device)
    }
}

/// `ModuleT` only: candle implements `ModuleT` for every `Module`, ignoring the training flag,
/// which batch-norm and dropout need; [`SmpUnetPlusPlus::forward`] is the inference call.
impl ModuleT for SmpUnetPlusPlus {
    /// The logits; `train` switches batch-norm to batch statistics.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        Ok(SmpUnetPlusPlus::forward_t(self, x, train)?)
    }
}

/// smp's network has one head, on the last decoder node: [`Outputs`] of one head (column 4),
/// so sliding windows, test-time augmentation, training and evaluation take it as they take
/// UNet++. [`MultiHeadSegmenter::infer`] records no graph of the input; the weights of a
/// loaded network are plain tensors.
impl MultiHeadSegmenter for SmpUnetPlusPlus {
    fn forward_heads(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        let logits = SmpUnetPlusPlus::forward_t(self, x, train)?;
        Ok(Outputs::new(vec![DEPTH], vec![logits], self.cfg.classes()))
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        SmpUnetPlusPlus::forward(self, &x.detach())
    }

    fn infer(&self, x: &Tensor) -> Result<Outputs> {
        self.forward_heads(&x.detach(), false)
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        SmpUnetPlusPlus::named_tensors(self)
    }

    fn save(&self, path: &Path) -> Result<()> {
        self.save_smp(path)
    }
}
