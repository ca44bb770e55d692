//! What every segmentation network of the crate offers, so that training and evaluation code
//! can take any of them.

use candle_core::Tensor;

use crate::nn::NamedTensor;
use crate::unet::UNet;
use crate::unetpp::{Outputs, UNetPlusPlus};
use crate::Result;

/// A segmentation network: images `(N, C, H, W)` in, the logits of one or more heads out.
pub trait SegmentationModel {
    /// Runs the network; `train` switches batch-norm and dropout to training behaviour.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Outputs>;

    /// Inference logits of the network's deepest (or only) head, recording no graph.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;

    /// Inference with every head: evaluation mode, no graph recorded.
    fn infer(&self, x: &Tensor) -> Result<Outputs>;

    /// Every tensor under its stable name.
    fn named_tensors(&self) -> Vec<NamedTensor>;

    /// Number of trainable parameters.
    fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.tensor.elem_count())
            .sum()
    }
}

impl SegmentationModel for UNetPlusPlus {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        UNetPlusPlus::forward_t(self, x, train)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        UNetPlusPlus::forward(self, x)
    }

    fn infer(&self, x: &Tensor) -> Result<Outputs> {
        self.detach()?.forward_t(&x.detach(), false)
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        UNetPlusPlus::named_tensors(self)
    }
}

impl SegmentationModel for UNet {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        UNet::forward_t(self, x, train)
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        UNet::forward(self, x)
    }

    fn infer(&self, x: &Tensor) -> Result<Outputs> {
        self.detach()?.forward_t(&x.detach(), false)
    }

    fn named_tensors(&self) -> Vec<NamedTensor> {
        UNet::named_tensors(self)
    }
}
