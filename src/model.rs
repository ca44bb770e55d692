//! The interface of the crate's segmentation networks, so that training and evaluation code
//! can take any of them. Every network is also a candle [`Module`](candle_core::Module) and
//! [`ModuleT`](candle_core::ModuleT) (the logits of its deepest head).

use candle_core::Tensor;

use crate::nested::{Outputs, UNetPlusPlus};
use crate::nn::NamedTensor;
use crate::unet::UNet;
use crate::Result;

/// A segmentation network with one or more heads (deep supervision): images `(N, C, H, W)`
/// in, the logits of every head out.
pub trait MultiHeadSegmenter {
    /// Runs the network and returns every head; `train` switches batch-norm and dropout to
    /// training behaviour.
    fn forward_heads(&self, x: &Tensor, train: bool) -> Result<Outputs>;

    /// Inference logits of the deepest (or only) head, recording no graph.
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

/// The trait in terms of the network's own methods of the same names.
macro_rules! multi_head_segmenter {
    ($($net:ty),*) => {$(
        impl MultiHeadSegmenter for $net {
            fn forward_heads(&self, x: &Tensor, train: bool) -> Result<Outputs> {
                <$net>::forward_heads(self, x, train)
            }

            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                <$net>::forward(self, x)
            }

            fn infer(&self, x: &Tensor) -> Result<Outputs> {
                self.detach()?.forward_heads(&x.detach(), false)
            }

            fn named_tensors(&self) -> Vec<NamedTensor> {
                <$net>::named_tensors(self)
            }
        }
    )*};
}

multi_head_segmenter!(UNetPlusPlus, UNet);
