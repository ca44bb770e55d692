//! ResNet (He et al. 2016) as torchvision builds it (v1.5: a Bottleneck strides in its 3×3
//! convolution), with torchvision's weight names, so that its `state_dict` loads unchanged.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, VarBuilder};

use crate::nn::{push, NamedTensor};
use crate::{weights, Error, Result};

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Configuration of a [`ResNet`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResNetConfig {
    /// Which ResNet.
    pub depth: ResNetDepth,
    /// Image channels (3 for torchvision's weights).
    pub in_channels: usize,
    /// Batch-norm layers always use their running statistics and are never updated (PyTorch's
    /// `FrozenBatchNorm2d`, as detection models use them).
    pub frozen_bn: bool,
    /// Batch-norm epsilon: 1e-5 (PyTorch's default; torchvision's COCO detection weights
    /// were trained with frozen batch-norm of epsilon 0).
    pub bn_eps: f64,
}

impl ResNetConfig {
    /// ResNet-18 on RGB images, trainable batch-norm.
    pub fn resnet18() -> Self {
        Self::new(ResNetDepth::R18)
    }

    /// ResNet-34 on RGB images, trainable batch-norm.
    pub fn resnet34() -> Self {
        Self::new(ResNetDepth::R34)
    }

    /// ResNet-50 on RGB images, trainable batch-norm.
    pub fn resnet50() -> Self {
        Self::new(ResNetDepth::R50)
    }

    fn new(depth: ResNetDepth) -> Self {
        Self {
            depth,
            in_channels: 3,
            frozen_bn: false,
            bn_eps: 1e-5,
        }
    }

    /// Channels of the five feature taps: the stem (stride 2) and layers 1–4 (strides 4 to 32).
    pub fn out_channels(&self) -> [usize; 5] {
        let e = self.depth.expansion();
        [64, 64 * e, 128 * e, 256 * e, 512 * e]
    }
}

/// Convolution + batch-norm, named as torchvision names them (`conv{k}` / `bn{k}` or
/// `downsample.0` / `downsample.1`); smp's decoder (`Conv2dReLU`) uses it too.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm,
    k: usize,
    stride: usize,
}

impl ConvBn {
    /// A `k × k` convolution (padding `k / 2`, no bias) and a batch-norm of epsilon `bn_eps`,
    /// frozen (never trained, running statistics always) when `frozen_bn`.
    pub(crate) fn new(
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        (bn_eps, frozen_bn): (f64, bool),
        vb_conv: VarBuilder,
        vb_bn: VarBuilder,
    ) -> Result<Self> {
        let conv = candle_nn::conv2d_no_bias(
            c_in,
            c_out,
            k,
            Conv2dConfig {
                padding: k / 2,
                stride,
                ..Default::default()
            },
            vb_conv,
        )?;
        let bn = candle_nn::batch_norm(
            c_out,
            BatchNormConfig {
                eps: bn_eps,
                remove_mean: true,
                affine: true,
                momentum: 0.1,
            },
            vb_bn,
        )?;
        let bn = if frozen_bn {
            // γ and β detached, so that training never updates them (the optimiser sees no
            // gradient); both share storage with the variables, so weights written into the
            // `VarMap` later (a checkpoint, pretrained weights) reach the layer. The running
            // statistics are passed as the variables themselves: `BatchNorm::new` would copy
            // any other tensor, and they get no gradient anyway (`fold_batch_norm` detaches
            // them).
            let (w, b) = bn.weight_and_bias().ok_or_else(|| {
                Error::config("frozen_bn", "batch-norm without affine parameters")
            })?;
            BatchNorm::new(
                c_out,
                bn.running_mean().clone(),
                bn.running_var().clone(),
                w.detach(),
                b.detach(),
                bn_eps,
            )?
        } else {
            bn
        };
        Ok(Self {
            conv,
            bn,
            k,
            stride,
        })
    }

    /// Convolution, batch-norm and, when `relu`, a ReLU. With batch statistics (`train` and a
    /// trainable batch-norm) the three run one after the other. With running statistics the
    /// batch-norm is a per-channel affine map, folded into the convolution
    /// ([`crate::nn::fold_batch_norm`]), which saves four passes over the output, forward and
    /// backward.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        train: bool,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let y = if train {
            let y = self.conv_forward(x, self.conv.weight(), None, false)?;
            crate::nn::batch_norm_forward(&self.bn, &y, true)?
        } else {
            let (kernel, bias) = crate::nn::fold_batch_norm(&self.bn, self.conv.weight(), None)?;
            return self.conv_forward(x, &kernel, Some(&bias), relu);
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// The convolution, with `bias` and a ReLU when `relu`, on unetpp's kernels: stride-1 3×3
    /// (bias and ReLU applied while the output is in cache) and 1×1 ones (most of a ResNet's
    /// work), and [`crate::ops::conv2d`] for the stem and the strided ones.
    fn conv_forward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        let (s, k) = (self.stride, self.k);
        if s == 1 && k == 3 {
            return Ok(crate::ops::conv3x3_fused(x, weight, bias, relu)?);
        }
        let y = if s == 1 && k == 1 {
            crate::ops::conv1x1(x, weight, bias)?
        } else {
            crate::ops::conv2d(x, weight, bias, s, k / 2)?
        };
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    pub(crate) fn named_tensors(&self, conv: &str, bn: &str, out: &mut Vec<NamedTensor>) {
        conv_bn_tensors(&self.conv, &self.bn, conv, bn, out);
    }
}

/// The tensors of a convolution (weight, optional bias) and its batch-norm under PyTorch's
/// names; the batch-norm's running statistics are buffers.
fn conv_bn_tensors(
    conv: &Conv2d,
    bn: &BatchNorm,
    conv_prefix: &str,
    bn_prefix: &str,
    out: &mut Vec<NamedTensor>,
) {
    push(out, conv_prefix, "weight", conv.weight(), true);
    if let Some(b) = conv.bias() {
        push(out, conv_prefix, "bias", b, true);
    }
    if let Some((w, b)) = bn.weight_and_bias() {
        push(out, bn_prefix, "weight", w, true);
        push(out, bn_prefix, "bias", b, true);
    }
    push(out, bn_prefix, "running_mean", bn.running_mean(), false);
    push(out, bn_prefix, "running_var", bn.running_var(), false);
}

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

    fn forward(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (k, cb) in self.convs.iter().enumerate() {
            y = cb.forward(&y, train, k < last)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, train, false)?,
            None => x.clone(),
        };
        Ok(crate::ops::add_relu(&y, &shortcut)?)
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
/// let net = ResNet::new(&ResNetConfig::resnet18(), VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
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
}

impl ResNet {
    /// The body of `cfg` with weights from `vb` under torchvision's names (`conv1.weight`,
    /// `bn1.*`, `layer{1-4}.{b}.conv{k}.weight`, `…bn{k}.*`, `…downsample.{0,1}.*`).
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.in_channels == 0 {
            return Err(Error::config("in_channels", "must be at least 1"));
        }
        if !(cfg.bn_eps.is_finite() && cfg.bn_eps >= 0.0) {
            return Err(Error::config(
                "bn_eps",
                format!("must be finite and non-negative, got {}", cfg.bn_eps),
            ));
        }
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
        Ok(Self {
            cfg: *cfg,
            stem,
            layers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Every tensor under torchvision's name, each prefixed with `prefix` and a dot when
    /// `prefix` is not empty (smp nests the body under `encoder`).
    pub fn named_tensors(&self, prefix: &str) -> Vec<NamedTensor> {
        let p = |name: &str| crate::nn::join(prefix, name);
        let mut out = Vec::new();
        self.stem.named_tensors(&p("conv1"), &p("bn1"), &mut out);
        for (stage, blocks) in self.layers.iter().enumerate() {
            for (b, block) in blocks.iter().enumerate() {
                let at = p(&format!("layer{}.{b}", stage + 1));
                for (k, cb) in block.convs.iter().enumerate() {
                    cb.named_tensors(
                        &format!("{at}.conv{}", k + 1),
                        &format!("{at}.bn{}", k + 1),
                        &mut out,
                    );
                }
                if let Some(d) = &block.downsample {
                    d.named_tensors(
                        &format!("{at}.downsample.0"),
                        &format!("{at}.downsample.1"),
                        &mut out,
                    );
                }
            }
        }
        out
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
    /// let net = ResNet::new(&ResNetConfig::resnet18(), vb)?;
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
