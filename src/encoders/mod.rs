//! Encoders: backbones whose feature maps can stand in for the encoder nodes `X^{0,0}, …,
//! X^{L,0}` of a UNet++ ([`crate::UNetPlusPlus::with_encoder`]), and that the detector's
//! backbone uses. ResNet-18/34/50 in torchvision's layout and weight names implement
//! [`Encoder`]; any other backbone can.

pub(crate) mod resnet;

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::nn::NamedTensor;
use crate::Result;

pub use resnet::{ResNet, ResNetConfig, ResNetConfigBuilder, ResNetDepth};

/// A backbone that computes feature maps ("taps") at strides `s, 2s, 4s, …` of its input,
/// finest first. A UNet++ built on it reads tap `i` as its node `X^{i,0}`.
pub trait Encoder: std::fmt::Debug + Send + Sync {
    /// The channels of each tap, finest first.
    fn channels(&self) -> Vec<usize>;

    /// The stride `s` of the finest tap (1 when it has the input's resolution); every later
    /// tap has twice the stride of the one before.
    fn stride(&self) -> usize;

    /// The taps of an image batch `(N, C, H, W)`; `train` switches batch-norm and dropout to
    /// training behaviour.
    fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>>;

    /// The same encoder with its tensors detached from any variable (for inference that
    /// records no graph).
    fn detached(&self) -> Result<Arc<dyn Encoder>>;

    /// Every tensor under its name, relative to the encoder.
    fn named_tensors(&self) -> Vec<NamedTensor>;

    /// The same encoder in `dtype`, its conversion recorded by autograd (see
    /// [`UNetPlusPlus::to_dtype`](crate::nested::UNetPlusPlus::to_dtype)). The default
    /// refuses: an encoder that can convert overrides it.
    fn to_dtype(&self, dtype: DType) -> Result<Arc<dyn Encoder>> {
        Err(crate::Error::Input(format!(
            "this encoder cannot convert itself to {dtype:?} (implement Encoder::to_dtype)"
        )))
    }
}

impl Encoder for ResNet {
    fn channels(&self) -> Vec<usize> {
        self.config().out_channels().to_vec()
    }

    fn stride(&self) -> usize {
        2
    }

    fn features(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        ResNet::features(self, x, train)
    }

    fn detached(&self) -> Result<Arc<dyn Encoder>> {
        Ok(Arc::new(ResNet::detach(self)?))
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        ResNet::named_tensors(self)
    }

    fn to_dtype(&self, dtype: DType) -> Result<Arc<dyn Encoder>> {
        Ok(Arc::new(ResNet::to_dtype(self, dtype)?))
    }
}
