//! # unetpp — UNet++ on candle
//!
//! UNet++ (Zhou, Siddiquee, Tajbakhsh, Liang, *IEEE TMI* 2020) replaces U-Net's plain skip
//! connections with **nested, dense skip pathways**. Node `X^{i,j}` sits at down-sampling
//! level `i` and column `j`; it concatenates every earlier node of its level,
//! `X^{i,0..j-1}`, with the up-sampled `X^{i+1,j-1}` from the level below, and applies a
//! double 3×3 convolution (Eq. 1 of the paper). The encoder and decoder feature maps are
//! thereby brought semantically close before they meet. Every node of the top row
//! `X^{0,1..L}` is a full-resolution segmentation, so the network is trained with **deep
//! supervision** (one loss per head) and can be used in **accurate mode** (average of the
//! heads) or **fast mode** (one head). Because the head on `X^{0,k}` only depends on the nodes
//! with `i + j ≤ k`, a trained network can be **pruned** to `L_k` at inference time: a
//! smaller, faster network with identical output for that head.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::prelude::*;
//!
//! let device = Device::Cpu;
//! // The paper's network, narrowed so the example runs in a blink.
//! let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16, 32, 64]).build()?;
//! let varmap = VarMap::new();
//! let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
//!
//! let images = Tensor::randn(0f32, 1., (2, 1, 32, 32), &device)?;
//! let out = net.forward_heads(&images, true)?;      // logits of X^{0,1}, …, X^{0,4}
//! assert_eq!(out.logits().len(), 4);
//! let probs = out.accurate()?;                  // mean of the heads' probabilities
//! assert_eq!(probs.dims(), &[2, 1, 32, 32]);
//!
//! let l2 = net.prune(Level::L2)?;               // keeps X^{i,j} with i + j <= 2
//! let y = l2.forward(&images)?;                 // equals head X^{0,2} of the full network
//! assert_eq!(y.dims(), &[2, 1, 32, 32]);
//! # Ok::<(), unetpp::Error>(())
//! ```
//!
//! Modules, from the bottom layer up (`docs/ARCHITECTURE.md` says which may use which):
//! [`ops`] (differentiable operations: fast CPU convolutions, pooling, resizing, batch-norm;
//! RoIAlign, NMS and boxes for detection), [`nn`] (layers: the convolution layer that alone
//! chooses a kernel, blocks, norms, up-sampling, seeded initialisation), [`weights`] (the
//! names a model records, safetensors I/O), [`encoders`] (the [`encoders::Encoder`] trait,
//! ResNet in torchvision's layout), [`nested`] (UNet++: grid, configuration, model, outputs),
//! [`unet`] (the U-Net baselines), [`model`] (what training takes), [`loss`] (BCE + Dice,
//! CE + Dice, deep supervision), [`metrics`] (IoU, Dice), [`data`] (synthetic and
//! image-folder data sets, image files, batching, augmentation), [`train`] (optimizer,
//! checkpoints, training step, evaluation), [`interop`] (weights from MONAI, NestedUNet and
//! segmentation_models_pytorch), [`device`]. [`maskrcnn`] has Mask R-CNN and Mask R-CNN++
//! (torchvision's `maskrcnn_resnet50_fpn`, and the same detector on a feature pyramid with
//! UNet++'s nested skips) and all their parts.
//!
//! On the CPU, convolutions run on the crate's own kernels (Winograd and banded GEMM, see
//! [`ops::set_cpu_conv_algo`]), several times faster than candle's; other devices use candle's.
//!
//! # Features
//!
//! | Feature | Adds | Default |
//! |---|---|---|
//! | `detection` | [`maskrcnn`], the detection ops of [`ops`] (boxes, NMS, RoIAlign, the multi-scale poolers), [`data::instances`] | yes |
//! | `image` | [`data::image_io`] (PNG, TIFF and JPEG reading and writing) and [`data::folder`] (the image-folder data set); the `image`, `png` and `tiff` dependencies | yes |
//! | `png` | the former name of `image`, which it turns on | no (through `image`) |
//! | `serde` | `Serialize` / `Deserialize` for the configurations | no |
//! | `cuda`, `cudnn`, `metal`, `mkl`, `accelerate` | candle's back-ends of the same names | no |
//!
//! UNet++, U-Net, the losses, metrics, training, encoders, interop and the synthetic data set
//! need none of them: `default-features = false` builds only those.
//!
// Without a feature its items do not exist: their links lead to the table above.
#![cfg_attr(not(feature = "detection"), doc = "[`maskrcnn`]: crate#features")]
#![cfg_attr(
    not(feature = "detection"),
    doc = "[`data::instances`]: crate#features"
)]
#![cfg_attr(not(feature = "image"), doc = "[`data::image_io`]: crate#features")]
#![cfg_attr(not(feature = "image"), doc = "[`data::folder`]: crate#features")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![deny(unsafe_code)]

/// `impl TryFrom<$builder> for $config` through the builder's validation: how the `serde`
/// feature reads every configuration (`#[serde(try_from = "…Builder")]`), so that a
/// configuration read from a file is checked as one written in code.
macro_rules! built_by {
    ($config:ty, $builder:ty) => {
        impl TryFrom<$builder> for $config {
            type Error = crate::Error;

            fn try_from(builder: $builder) -> crate::Result<Self> {
                builder.build()
            }
        }
    };
}

pub mod data;
pub mod device;
pub mod encoders;
mod error;
mod fsio;
pub mod inference;
pub mod interop;
pub mod loss;
#[cfg(feature = "detection")]
#[cfg_attr(docsrs, doc(cfg(feature = "detection")))]
pub mod maskrcnn;
pub mod metrics;
pub mod model;
pub mod nested;
pub mod nn;
pub mod ops;
pub mod train;
pub mod unet;
pub mod weights;

pub use error::{Error, Result};
pub use model::MultiHeadSegmenter;
pub use nested::{Level, Outputs, UNetPlusPlus, UNetPlusPlusConfig};
pub use unet::UNet;

/// The names most programs need.
pub mod prelude {
    pub use crate::loss::{BceDice, CeDice, DeepSupervisionLoss, SegmentationLoss};
    pub use crate::metrics::SegmentationMetrics;
    pub use crate::model::MultiHeadSegmenter;
    pub use crate::nested::{ConcatOrder, Level, Outputs, UNetPlusPlus, UNetPlusPlusConfig};
    pub use crate::nn::{Activation, Norm, Upsample};
    pub use crate::unet::UNet;
    pub use crate::{Error, Result};
}
