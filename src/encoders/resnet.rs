//! ResNet (He et al. 2016) as torchvision builds it (v1.5: a Bottleneck strides in its 3×3
//! convolution), with torchvision's weight names, so that its `state_dict` loads unchanged.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{ConvBn, NamedTensor};
use crate::{weights, Error, Result};

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ResNetDepth {
    /// ResNet-18: basic blocks 2, 2, 2, 2.
    R18,
    /// ResNet-34: basic blocks 3, 4, 6, 3.
    R34,
    /// ResNet-50: bottleneck blocks 3, 4, 6, 3.
    R50,
}

impl ResNetDepth {
    fn blocks(self) -> [usize; 4] {
        match self {
            ResNetDepth::R18 => [2, 2, 2, 2],
            ResNetDepth::R34 | ResNetDepth::R50 => [3, 4, 6, 3],
        }
    }

    fn expansion(self) -> usize {
        match self {
            ResNetDepth::R50 => 4,
            _ => 1,
        }
    }
}

/// A validated configuration of a [`ResNet`]: a preset ([`Self::resnet18`], …), chained
/// setters on the returned [`ResNetConfigBuilder`], then [`ResNetConfigBuilder::build`].
///
/// ```
/// use unetpp::encoders::ResNetConfig;
/// let cfg = ResNetConfig::resnet50().frozen_bn(true).bn_eps(0.0).build()?;
/// assert_eq!(cfg.out_channels(), [64, 256, 512, 1024, 2048]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "ResNetConfigBuilder"))]
pub struct ResNetConfig {
    depth: ResNetDepth,
    in_channels: usize,
    frozen_bn: bool,
    bn_eps: f64,
}

/// Chained setters for a [`ResNetConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ResNetConfigBuilder {
    depth: ResNetDepth,
    in_channels: usize,
    frozen_bn: bool,
    bn_eps: f64,
}

impl ResNetConfig {
    /// ResNet-18 on RGB images, trainable batch-norm of epsilon 1e-5.
    pub fn resnet18() -> ResNetConfigBuilder {
        ResNetConfigBuilder::new(ResNetDepth::R18)
    }

    /// ResNet-34 on RGB images, trainable batch-norm of epsilon 1e-5.
    pub fn resnet34() -> ResNetConfigBuilder {
        ResNetConfigBuilder::new(ResNetDepth::R34)
    }

    /// ResNet-50 on RGB images, trainable batch-norm of epsilon 1e-5.
    pub fn resnet50() -> ResNetConfigBuilder {
        ResNetConfigBuilder::new(ResNetDepth::R50)
    }

    /// Which ResNet.
    pub fn depth(&self) -> ResNetDepth {
        self.depth
    }

    /// Image channels.
    pub fn in_channels(&self) -> usize {
        self.in_channels
    }

    /// Whether batch-norm is frozen (running statistics always, never trained).
    pub fn frozen_bn(&self) -> bool {
        self.frozen_bn
    }

    /// The batch-norm epsilon.
    pub fn bn_eps(&self) -> f64 {
        self.bn_eps
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> ResNetConfigBuilder {
        ResNetConfigBuilder {
            depth: self.depth,
            in_channels: self.in_channels,
            frozen_bn: self.frozen_bn,
            bn_eps: self.bn_eps,
        }
    }

    /// Channels of the five feature taps: the stem (stride 2) and layers 1–4 (strides 4 to 32).
    pub fn out_channels(&self) -> [usize; 5] {
        let e = self.depth.expansion();
        [64, 64 * e, 128 * e, 256 * e, 512 * e]
    }
}

impl ResNetConfigBuilder {
    fn new(depth: ResNetDepth) -> Self {
        Self {
            depth,
            in_channels: 3,
            frozen_bn: false,
            bn_eps: 1e-5,
        }
    }

    /// Image channels (3 for torchvision's weights).
    pub fn in_channels(mut self, in_channels: usize) -> Self {
        self.in_channels = in_channels;
        self
    }

    /// Batch-norm layers always use their running statistics and are never updated (PyTorch's
    /// `FrozenBatchNorm2d`, as detection models use them).
    pub fn frozen_bn(mut self, frozen_bn: bool) -> Self {
        self.frozen_bn = frozen_bn;
        self
    }

    /// Batch-norm epsilon: 1e-5 (PyTorch's default; torchvision's COCO detection weights were
    /// trained with frozen batch-norm of epsilon 0).
    pub fn bn_eps(mut self, bn_eps: f64) -> Self {
        self.bn_eps = bn_eps;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<ResNetConfig> {
        if self.in_channels == 0 {
            return Err(Error::config("in_channels", "must be at least 1"));
        }
        if !(self.bn_eps.is_finite() && self.bn_eps >= 0.0) {
            return Err(Error::config(
                "bn_eps",
                format!("must be finite and non-negative, got {}", self.bn_eps),
            ));
        }
        Ok(ResNetConfig {
            depth: self.depth,
            in_channels: self.in_channels,
            frozen_bn: self.frozen_bn,
            bn_eps: self.bn_eps,
        })
    }
}

built_by!(ResNetConfig, ResNetConfigBuilder);

/// A residual block: basic (two 3×3) or bottleneck (1×1, 3×3, 1×1), with the projection of
/// the shortcut where the shape changes.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        c_in: usize,
        width: usize,
        stride: usize,
        cfg: &ResNetConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let e = cfg.depth.expansion();
        let c_out = width * e;
        let shapes: Vec<(usize, usize, usize, usize)> = if e == 1 {
            vec![(c_in, width, 3, stride), (width, width, 3, 1)]
        } else {
            vec![
                (c_in, width, 1, 1),
                (width, width, 3, stride),
                (width, c_out, 1, 1),
            ]
        };
        let convs = shapes
            .into_iter()
            .enumerate()
            .map(|(k, (ci, co, ks, s))| {
                ConvBn::new(
                    ci,
                    co,
                    ks,
                    s,
                    (cfg.bn_eps, cfg.frozen_bn),
                    vb.pp(format!("conv{}", k + 1)),
                    vb.pp(format!("bn{}", k + 1)),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = if stride != 1 || c_in != c_out {
            let d = vb.pp("downsample");
            Some(ConvBn::new(
                c_in,
                c_out,
                1,
                stride,
                (cfg.bn_eps, cfg.frozen_bn),
                d.pp("0"),
                d.pp("1"),
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (k, cb) in self.convs.iter().enumerate() {
            y = cb.forward(&y, train, k < last)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train, false)?,
            None => x.clone(),
        };
        crate::ops::add_relu(&y, &shortcut)
    }
}

/// A ResNet body without its classifier: the stem (7×7 convolution, stride 2, batch-norm,
/// ReLU), a 3×3 max-pool of stride 2, and four stages of residual blocks. [`ResNet::features`]
/// returns the five taps an encoder-decoder reads.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::encoders::{ResNet, ResNetConfig};
///
/// let varmap = VarMap::new();
/// let net = ResNet::new(&ResNetConfig::resnet18().build()?, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
/// let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu)?;
/// let taps = net.features(&x, false)?;
/// assert_eq!(taps[4].dims(), &[1, 512, 2, 2]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    stem: ConvBn,
    layers: Vec<Vec<Block>>,
    tensors: Vec<NamedTensor>,
}

impl ResNet {
    /// The body of `cfg` with weights from `vb` under torchvision's names (`conv1.weight`,
    /// `bn1.*`, `layer{1-4}.{b}.conv{k}.weight`, `…bn{k}.*`, `…downsample.{0,1}.*`).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let ((stem, layers), tensors) = weights::record(vb, |vb| Self::layers(cfg, &vb))?;
        Ok(Self {
            cfg: *cfg,
            stem,
            layers,
            tensors,
        })
    }

    /// The stem and the four stages of `cfg`.
    fn layers(cfg: &ResNetConfig, vb: &VarBuilder) -> Result<(ConvBn, Vec<Vec<Block>>)> {
        let stem = ConvBn::new(
            cfg.in_channels,
            64,
            7,
            2,
            (cfg.bn_eps, cfg.frozen_bn),
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut layers = Vec::with_capacity(4);
        let mut c_in = 64;
        for (stage, &n) in cfg.depth.blocks().iter().enumerate() {
            let width = 64 << stage;
            let vb_layer = vb.pp(format!("layer{}", stage + 1));
            let mut blocks = Vec::with_capacity(n);
            for b in 0..n {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    c_in,
                    width,
                    stride,
                    cfg,
                    vb_layer.pp(b.to_string()),
                )?);
                c_in = width * cfg.depth.expansion();
            }
            layers.push(blocks);
        }
        Ok((stem, layers))
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Every tensor under torchvision's name (`conv1.weight`, `bn1.running_mean`, …).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }

    /// A copy whose tensors are detached from any variable (they share the data).
    pub fn detach(&self) -> Result<Self> {
        Self::new(
            &self.cfg,
            weights::var_builder_over(&weights::detached(&self.tensors)),
        )
    }

    /// The encoder in `dtype`, its conversion recorded by autograd (gradients reach the
    /// original variables); `self` is untouched.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Self::new(
            &self.cfg,
            weights::var_builder_over_in(&self.tensors, dtype),
        )
    }

    /// The feature taps of `x (N, C, H, W)`: the stem after its ReLU (stride 2), then the
    /// outputs of layers 1–4 (strides 4, 8, 16, 32), with the channels of
    /// [`ResNetConfig::out_channels`]. `train` switches batch-norm to batch statistics (never
    /// with `frozen_bn`).
    pub fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        self.features_trainable(x, train, 5)
    }

    /// [`Self::features`] where only the last `trainable_layers` stages (`layer4`, `layer3`,
    /// `layer2`, `layer1`, the stem, in that order; at most 5) are trained: the output of the
    /// last frozen stage is detached, so the backward pass stops there and neither the frozen
    /// stages' weights nor the input get a gradient — what torchvision obtains by setting
    /// `requires_grad = False` on them (`trainable_backbone_layers`). The values are those of
    /// [`Self::features`]; only the backward pass is shorter (with 3 trainable stages it skips
    /// the stem and `layer1`, which run on the largest maps).
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor, Var};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use unetpp::encoders::{ResNet, ResNetConfig};
    ///
    /// let varmap = VarMap::new();
    /// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    /// let net = ResNet::new(&ResNetConfig::resnet18().build()?, vb)?;
    /// let x = Var::from_tensor(&Tensor::ones((1, 3, 32, 32), DType::F32, &Device::Cpu)?)?;
    /// let taps = net.features_trainable(x.as_tensor(), false, 3)?;
    /// let grads = taps[4].sum_all()?.backward()?;
    /// assert!(grads.get(x.as_tensor()).is_none());
    /// # Ok::<(), unetpp::Error>(())
    /// ```
    pub fn features_trainable(
        &self,
        x: &Tensor,
        train: bool,
        trainable_layers: usize,
    ) -> Result<Vec<Tensor>> {
        if trainable_layers > 5 {
            return Err(Error::config(
                "trainable_layers",
                format!("0 to 5 ResNet stages, got {trainable_layers}"),
            ));
        }
        let (_, c, h, w) = x.dims4().map_err(|_| {
            Error::Shape(format!(
                "expected an (N, C, H, W) image batch, got {:?}",
                x.dims()
            ))
        })?;
        if c != self.cfg.in_channels {
            return Err(Error::Shape(format!(
                "expected {} input channel(s), got {c}",
                self.cfg.in_channels
            )));
        }
        if h < 2 || w < 2 {
            return Err(Error::Shape(format!(
                "image of {h}x{w} is too small for a ResNet"
            )));
        }
        let train = train && !self.cfg.frozen_bn;
        // Stage k (0 = stem) is frozen when k < 5 − trainable_layers.
        let frozen = |stage: usize| stage + trainable_layers < 5;
        let mut stem = self.stem.forward(x, train, true)?;
        if frozen(0) {
            stem = stem.detach();
        }
        let mut taps = Vec::with_capacity(5);
        let mut y = crate::ops::max_pool2d(&stem, 3, 2, 1)?;
        taps.push(stem);
        for (k, blocks) in self.layers.iter().enumerate() {
            for b in blocks {
                y = b.forward(&y, train)?;
            }
            if frozen(k + 1) {
                y = y.detach();
            }
            taps.push(y.clone());
        }
        Ok(taps)
    }

    /// Builds the body of `cfg` from a torchvision `state_dict` (as named tensors, for example
    /// read from a safetensors export). The classifier (`fc.*`) and `num_batches_tracked`
    /// counters are skipped; any other missing, extra or mis-shaped tensor is an
    /// [`Error::Weights`] naming it.
    pub fn from_torchvision(
        cfg: &ResNetConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let kept = weights::without_bn_counters(tensors)
            .into_iter()
            .filter(|(n, _)| !n.starts_with("fc."))
            .collect();
        weights::build_checked(kept, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// [`Self::from_torchvision`] from a safetensors file.
    pub fn load_torchvision(
        cfg: &ResNetConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_torchvision(cfg, weights::load_tensors(path, device)?, device)
    }
}
