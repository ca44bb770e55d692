//! The detector's backbone: a ResNet body (`backbone.body.*`) whose layers 1–4 feed a feature
//! pyramid (`backbone.fpn.*`), as torchvision's `resnet_fpn_backbone` builds it — either
//! torchvision's FPN (Mask R-CNN) or the nested pyramid (Mask R-CNN++).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::fpn::Fpn;
use super::nested_fpn::NestedFpn;
use crate::encoders::{ResNet, ResNetConfig};
use crate::nn::NamedTensor;
use crate::{weights, Result};

/// ResNet + FPN: five maps of `out_channels` at strides 4, 8, 16, 32 and 64.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::encoders::ResNetConfig;
/// use unetpp::maskrcnn::ResNetFpn;
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let backbone = ResNetFpn::new(&ResNetConfig::resnet18().build()?, 32, vb)?;
/// let maps = backbone.forward(&Tensor::zeros((1, 3, 64, 96), DType::F32, &Device::Cpu)?)?;
/// let sizes: Vec<_> = maps.iter().map(|m| m.dims().to_vec()).collect();
/// assert_eq!(sizes[0], vec![1, 32, 16, 24]);
/// assert_eq!(sizes[4], vec![1, 32, 1, 2]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ResNetFpn {
    body: ResNet,
    pyramid: Pyramid,
    trainable_layers: usize,
    tensors: Vec<NamedTensor>,
}

/// Which feature pyramid a [`ResNetFpn`] has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PyramidKind {
    /// torchvision's FPN: Mask R-CNN.
    #[default]
    Fpn,
    /// The nested pyramid with UNet++'s dense skips ([`NestedFpn`]): Mask R-CNN++.
    Nested,
}

#[derive(Debug, Clone)]
enum Pyramid {
    Plain(Fpn),
    Nested(NestedFpn),
}

impl ResNetFpn {
    /// The body of `resnet` (`vb.pp("body")`) and a pyramid of `out_channels` (`vb.pp("fpn")`).
    /// torchvision's Mask R-CNN uses ResNet-50 with frozen batch-norm and 256 channels.
    pub fn new(resnet: &ResNetConfig, out_channels: usize, vb: VarBuilder) -> Result<Self> {
        Self::with_pyramid(resnet, out_channels, PyramidKind::Fpn, vb)
    }

    /// [`Self::new`] with the pyramid of `kind` (both under `vb.pp("fpn")`).
    pub fn with_pyramid(
        resnet: &ResNetConfig,
        out_channels: usize,
        kind: PyramidKind,
        vb: VarBuilder,
    ) -> Result<Self> {
        let ((body, pyramid), tensors) = weights::record(vb, |vb| {
            let body = ResNet::new(resnet, vb.pp("body"))?;
            let taps = resnet.out_channels();
            let pyramid = match kind {
                PyramidKind::Fpn => {
                    Pyramid::Plain(Fpn::new(&taps[1..], out_channels, vb.pp("fpn"))?)
                }
                PyramidKind::Nested => {
                    Pyramid::Nested(NestedFpn::new(&taps[1..], out_channels, vb.pp("fpn"))?)
                }
            };
            Ok((body, pyramid))
        })?;
        Ok(ResNetFpn {
            body,
            pyramid,
            trainable_layers: 5,
            tensors,
        })
    }

    /// The same backbone training only the last `trainable_layers` stages of its body (see
    /// [`ResNet::features_trainable`]; 5, all of them, unless set). The pyramid always trains.
    pub fn with_trainable_layers(mut self, trainable_layers: usize) -> Result<Self> {
        if trainable_layers > 5 {
            return Err(crate::Error::config(
                "trainable_backbone_layers",
                format!("0 to 5 ResNet stages, got {trainable_layers}"),
            ));
        }
        self.trainable_layers = trainable_layers;
        Ok(self)
    }

    /// How many stages of the body train (counted from `layer4` down).
    pub fn trainable_layers(&self) -> usize {
        self.trainable_layers
    }

    /// The ResNet body.
    pub fn body(&self) -> &ResNet {
        &self.body
    }

    /// Which pyramid this backbone has.
    pub fn pyramid_kind(&self) -> PyramidKind {
        match self.pyramid {
            Pyramid::Plain(_) => PyramidKind::Fpn,
            Pyramid::Nested(_) => PyramidKind::Nested,
        }
    }

    /// The pyramid's tensors alone, under their names in the pyramid (for parameter counts).
    pub fn pyramid_tensors(&self) -> Vec<NamedTensor> {
        match &self.pyramid {
            Pyramid::Plain(f) => f.named_tensors(),
            Pyramid::Nested(f) => f.named_tensors(),
        }
    }

    /// The pyramid of `images (N, 3, H, W)`: levels `'0'`–`'3'` and `'pool'` in torchvision's
    /// terms. Batch-norm uses running statistics (the body's batch-norm is frozen in
    /// detection; with a trainable one, see [`ResNet::features`]).
    pub fn forward(&self, images: &Tensor) -> Result<Vec<Tensor>> {
        self.forward_t(images, false)
    }

    /// [`Self::forward`] with batch statistics in trainable batch-norm layers when `train`.
    pub fn forward_t(&self, images: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let taps = self
            .body
            .features_trainable(images, train, self.trainable_layers)?;
        match &self.pyramid {
            Pyramid::Plain(f) => f.forward(&taps[1..]),
            Pyramid::Nested(f) => f.forward(&taps[1..]),
        }
    }

    /// Every tensor under torchvision's names (`body.*`, `fpn.*`).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }
}
