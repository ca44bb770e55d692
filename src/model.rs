//! The interface of the crate's segmentation networks, so that training and evaluation code
//! can take any of them. Every network is also a candle [`Module`](candle_core::Module) and
//! [`ModuleT`](candle_core::ModuleT) (the logits of its deepest head).

use std::path::Path;

use candle_core::Tensor;

use crate::nested::{Outputs, UNetPlusPlus};
use crate::nn::NamedTensor;
use crate::unet::UNet;
use crate::Result;

/// Which output of a network to use: to score it, to predict with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The mean of every head's probabilities (the paper's accurate mode).
    Accurate,
    /// One head, `X^{0,j}` (the paper's fast mode; with a network pruned to `L_j` it is the
    /// only head).
    Fast(usize),
    /// The deepest head the network has.
    Last,
}

impl Mode {
    /// The probabilities of this mode's output (sigmoid for one class, softmax over the
    /// classes otherwise; accurate mode averages the heads' probabilities).
    pub fn probabilities(self, out: &Outputs) -> Result<Tensor> {
        match self {
            Mode::Accurate => out.accurate(),
            Mode::Fast(col) => out.fast(col),
            Mode::Last => out.probabilities(out.last()),
        }
    }

    /// The logits of this mode's head; accurate mode has none (it averages probabilities),
    /// so it is an [`Error::Config`](crate::Error::Config).
    pub fn logits(self, out: &Outputs) -> Result<Tensor> {
        match self {
            Mode::Accurate => Err(crate::Error::config(
                "mode",
                "accurate mode averages probabilities; it has no logits (use Fast or Last)",
            )),
            Mode::Fast(col) => Ok(out.head(col)?.clone()),
            Mode::Last => Ok(out.last().clone()),
        }
    }
}

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

    /// Writes the network to a safetensors file, atomically. UNet++ and U-Net store their
    /// configuration with the tensors, so that `UNetPlusPlus::load` / `UNet::load` need
    /// nothing else; smp's network writes smp's names. The default writes
    /// [`Self::named_tensors`] alone.
    fn save(&self, path: &Path) -> Result<()> {
        crate::weights::save_tensors(&self.named_tensors(), path)
    }

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

            fn save(&self, path: &Path) -> Result<()> {
                <$net>::save(self, path)
            }
        }
    )*};
}

multi_head_segmenter!(UNetPlusPlus, UNet);
