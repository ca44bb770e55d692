//! Inference on real inputs: sliding windows over images larger than a network can take
//! whole ([`SlidingWindow`]), test-time augmentation ([`Tta`]), and [`Segmenter`], which puts
//! a network, a [`Mode`], a window and augmentation together.
//!
//! Everything here works over any number of spatial axes: the same code segments 2-D images
//! `(N, C, H, W)` and 3-D volumes `(N, C, D, H, W)`.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//! use unetpp::inference::{Blend, Segmenter, SlidingWindow, Tta};
//! use unetpp::prelude::*;
//! use unetpp::model::Mode;
//!
//! let cfg = UNetPlusPlusConfig::paper().widths([4, 8, 16, 32, 64]).build()?;
//! let varmap = VarMap::new();
//! let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu))?;
//!
//! let image = Tensor::rand(0f32, 1., (1, 1, 80, 112), &Device::Cpu)?;
//! let window = SlidingWindow::builder([32, 32])
//!     .overlap(0.5)
//!     .blend(Blend::Gaussian { sigma_scale: 0.125 })
//!     .batch_size(4)
//!     .build()?;
//! let probs = Segmenter::new(&net)
//!     .mode(Mode::Accurate)
//!     .sliding_window(window)
//!     .tta(Tta::flips(2)?)
//!     .probabilities(&image)?;
//! assert_eq!(probs.dims(), &[1, 1, 80, 112]);
//! # Ok::<(), unetpp::Error>(())
//! ```

mod sliding_window;
mod tta;

use candle_core::Tensor;

use crate::metrics::labels_from_probabilities;
pub use crate::model::Mode;
use crate::model::MultiHeadSegmenter;
use crate::Result;
pub use sliding_window::{Blend, Padding, Progress, SlidingWindow, SlidingWindowBuilder};
pub use tta::{Transform, Tta};

/// A network ready to segment: which output ([`Mode`], default [`Mode::Accurate`]), whether
/// to slide a window, whether to augment at test time. Augmentation runs inside each window
/// (the network sees every transformed window), as nnU-Net does.
pub struct Segmenter<'m, M: MultiHeadSegmenter + ?Sized> {
    model: &'m M,
    mode: Mode,
    window: Option<SlidingWindow>,
    tta: Option<Tta>,
}

impl<'m, M: MultiHeadSegmenter + ?Sized> Segmenter<'m, M> {
    /// The network in accurate mode, run on the whole input, without augmentation.
    pub fn new(model: &'m M) -> Self {
        Self {
            model,
            mode: Mode::Accurate,
            window: None,
            tta: None,
        }
    }

    /// Which output to use.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Runs the network on the windows of `window` instead of the whole input.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = Some(window);
        self
    }

    /// Averages the probabilities over the transforms of `tta`.
    pub fn tta(mut self, tta: Tta) -> Self {
        self.tta = Some(tta);
        self
    }

    /// Probabilities `(N, K, spatial…)` of `images` `(N, C, spatial…)`: sigmoid for one
    /// class, softmax over the classes otherwise.
    pub fn probabilities(&self, images: &Tensor) -> Result<Tensor> {
        self.probabilities_with_progress(images, |_| {})
    }

    /// [`Self::probabilities`], calling `progress` after each batch of windows (once, for the
    /// whole input, without a sliding window).
    pub fn probabilities_with_progress<P: FnMut(Progress)>(
        &self,
        images: &Tensor,
        mut progress: P,
    ) -> Result<Tensor> {
        let predict = |x: &Tensor| -> Result<Tensor> {
            let once = |x: &Tensor| self.mode.probabilities(&self.model.infer(x)?);
            match &self.tta {
                Some(tta) => tta.run(x, once),
                None => once(x),
            }
        };
        match &self.window {
            Some(window) => window.run_with_progress(images, predict, progress),
            None => {
                let out = predict(images)?;
                progress(Progress { done: 1, total: 1 });
                Ok(out)
            }
        }
    }

    /// Labels `(N, spatial…)` (`u32`): probability above 0.5 for one class, the most probable
    /// class otherwise.
    pub fn labels(&self, images: &Tensor) -> Result<Tensor> {
        labels_from_probabilities(&self.probabilities(images)?)
    }
}
