//! The plain U-Net baseline, built from the same blocks as UNet++.
//!
//! The paper compares UNet++ with U-Net and with a *wide* U-Net whose widths (35, 70, 140,
//! 280, 560) give it about as many parameters as UNet++. Both are here, on the same grid
//! ([`Grid::plain`](crate::nested::Grid::plain)), with the same blocks, up-sampling, weight
//! names and file format, so a comparison changes only the network.
//!
//! ```
//! use candle_core::{DType, Device, ModuleT, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::unet::UNet;
//!
//! let cfg = UNet::paper().build()?;
//! let varmap = VarMap::new();
//! let net = UNet::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//! assert_eq!(net.num_parameters(), 7_759_521);
//! # Ok::<(), unetpp::Error>(())
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::VarBuilder;

use crate::nested::{Grid, Outputs, UNetPlusPlus, UNetPlusPlusConfig, UNetPlusPlusConfigBuilder};
use crate::nn::NamedTensor;
use crate::{weights, Result};

/// U-Net (Ronneberger et al. 2015) on the UNet++ grid: the encoder `X^{i,0}` and the decoder
/// `X^{L-1,1}, …, X^{0,L}`, each decoder node reading the up-sampled node below and the
/// encoder node of its level. One head, on `X^{0,L}`.
///
/// The configuration is a [`UNetPlusPlusConfig`]: widths, depth, norm, activation,
/// up-sampling and concatenation order mean the same; its heads and deep supervision are not
/// used.
#[derive(Debug, Clone)]
pub struct UNet {
    net: UNetPlusPlus,
}

impl UNet {
    /// The paper's U-Net: widths 32, 64, 128, 256, 512, 3×3 convolutions with ReLU, 2×2
    /// transposed-convolution up-sampling; 7,759,521 parameters for one input channel and one
    /// class.
    pub fn paper() -> UNetPlusPlusConfigBuilder {
        UNetPlusPlusConfig::paper().deep_supervision(false)
    }

    /// The paper's wide U-Net: widths 35, 70, 140, 280, 560, about as many parameters as
    /// UNet++ L4 (9,282,246 for one input channel and one class).
    pub fn wide() -> UNetPlusPlusConfigBuilder {
        Self::paper().widths([35, 70, 140, 280, 560])
    }

    /// The U-Net of `cfg`, with weights from `vb`.
    pub fn new(cfg: &UNetPlusPlusConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            net: UNetPlusPlus::new_plain(cfg, vb)?,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetPlusPlusConfig {
        self.net.config()
    }

    /// Its nodes ([`Grid::plain`]).
    pub fn grid(&self) -> &Grid {
        self.net.grid()
    }

    /// Inference: the logits `(N, classes, H, W)` in evaluation mode, recording no graph.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.net.forward(x)
    }

    /// Runs the network; `train` switches batch-norm and dropout to training behaviour. The
    /// [`Outputs`] hold the one head, `X^{0,L}` (as [`ModuleT::forward_t`] gives it).
    pub fn forward_heads(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        self.net.forward_heads(x, train)
    }

    /// Every tensor under its stable name (the same names as UNet++'s nodes).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.net.named_tensors()
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.net.num_parameters()
    }

    /// A copy detached from any training variable.
    pub fn detach(&self) -> Result<Self> {
        Ok(Self {
            net: self.net.detach()?,
        })
    }

    /// The network in `dtype`, its conversion recorded by autograd (see
    /// [`UNetPlusPlus::to_dtype`]: half-precision inference, mixed-precision training).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Self {
            net: self.net.to_dtype(dtype)?,
        })
    }

    /// Writes the tensors to a safetensors file, atomically, with the configuration in its
    /// metadata (see [`Self::load`]).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.net.save(path)
    }

    /// Builds the U-Net of `cfg` from named tensors; missing, extra or mis-shaped tensors are
    /// an [`Error::Weights`](crate::Error::Weights) naming the tensor.
    pub fn from_tensors(
        cfg: &UNetPlusPlusConfig,
        tensors: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        weights::build_checked(tensors, DType::F32, device, |vb| Self::new(cfg, vb))
    }

    /// Loads a U-Net written by [`Self::save`], with the configuration stored in the file.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let (stored, tensors) =
            crate::nested::read_stored(path.as_ref(), crate::nested::NETWORK_UNET, device)?;
        Self::from_tensors(&stored.cfg, tensors, device)
    }

    /// Loads the U-Net of `cfg` from a file written by [`Self::save`], ignoring any stored
    /// configuration (files written before configurations were stored).
    pub fn load_with_config(
        cfg: &UNetPlusPlusConfig,
        path: impl AsRef<Path>,
        device: &Device,
    ) -> Result<Self> {
        Self::from_tensors(cfg, weights::load_tensors(path, device)?, device)
    }
}

/// `ModuleT` only: candle implements `ModuleT` for every `Module`, ignoring the training flag,
/// which batch-norm and dropout need; [`UNet::forward`] is the inference call.
impl ModuleT for UNet {
    /// The logits, recording the graph.
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.net.forward_t(x, train)
    }
}
