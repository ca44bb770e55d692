//! Images in and detections out of a Mask R-CNN: torchvision's `GeneralizedRCNNTransform`
//! and `paste_masks_in_image`.
//!
//! Before the backbone, each image is normalized with the ImageNet statistics, resized so
//! that its short side is `min_size` unless its long side would then pass `max_size` (the
//! Mask R-CNN paper, He et al. 2017, §3.1: "images are resized such that their scale (shorter
//! edge) is 800 pixels"), and the batch is padded to a common size divisible by the backbone's
//! stride (32). Training targets follow the images: boxes are scaled, masks resized by
//! nearest neighbour. After the heads, [`RcnnTransform::postprocess`] maps boxes back to the
//! original image and pastes the `M × M` mask predictions into it.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use unetpp::maskrcnn::RcnnTransform;
//!
//! let transform = RcnnTransform::mask_rcnn().min_size(48).max_size(80).build()?;
//! let images = [
//!     Tensor::rand(0f32, 1., (3, 30, 40), &Device::Cpu)?,
//!     Tensor::rand(0f32, 1., (3, 60, 20), &Device::Cpu)?,
//! ];
//! let batch = transform.forward(&images)?;
//! // 30×40 grows by 48/30 to 48×64; 60×20 would be 144×48, so max_size binds: 80×26.
//! assert_eq!(batch.image_sizes, [(48, 64), (80, 26)]);
//! assert_eq!(batch.tensors.dims(), &[2, 3, 96, 64]);
//! # Ok::<(), unetpp::Error>(())
//! ```

mod batch;
mod config;
mod paste;
mod resize;
mod target;

use candle_core::Tensor;
use rand::Rng;

use crate::{Error, Result};

pub use batch::ImageList;
pub use config::{RcnnTransform, RcnnTransformBuilder};
pub use paste::paste_masks_in_image;
pub use resize::resize_boxes;
pub use target::Target;

impl RcnnTransform {
    /// `(image − mean) / std` per channel of a `(C, H, W)` floating-point image, computed in
    /// the image's dtype.
    ///
    /// Fails if the image is not 3-D or has not as many channels as the mean has values
    /// ([`Error::Shape`]), or is not floating point ([`Error::Input`]; torchvision raises
    /// `TypeError`).
    pub fn normalize(&self, image: &Tensor) -> Result<Tensor> {
        let (c, _, _) = image.dims3().map_err(|_| {
            Error::Shape(format!(
                "RcnnTransform expects (C, H, W) images, got shape {:?}",
                image.dims()
            ))
        })?;
        if c != self.image_mean().len() {
            return Err(Error::Shape(format!(
                "RcnnTransform has a mean for {} channels, the image has {c}",
                self.image_mean().len()
            )));
        }
        if !image.dtype().is_float() {
            return Err(Error::Input(format!(
                "RcnnTransform expects floating-point images (values in [0, 1]), got {:?}",
                image.dtype()
            )));
        }
        let stat = |values: &[f64]| -> Result<Tensor> {
            Ok(crate::ops::host_tensor(
                values.to_vec(),
                (c, 1, 1),
                image.dtype(),
                image.device(),
            )?)
        };
        let (mean, std) = (stat(self.image_mean())?, stat(self.image_std())?);
        Ok(image.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// The inference transform: each `(C, H, W)` image normalized, resized with
    /// [`Self::eval_min_size`], then batched (torchvision's `forward` in eval mode).
    ///
    /// Fails if there is no image, or as [`Self::normalize`] and [`Self::resized_size`] do.
    pub fn forward(&self, images: &[Tensor]) -> Result<ImageList> {
        let resized = images
            .iter()
            .map(|img| {
                Ok(self
                    .resize(&self.normalize(img)?, self.eval_min_size(), None)?
                    .0)
            })
            .collect::<Result<Vec<_>>>()?;
        self.batch_images(&resized)
    }

    /// The inference transform of images with their targets, resized with them (torchvision's
    /// `forward(images, targets)` in eval mode, as for a validation loss).
    ///
    /// Fails as [`Self::forward_train`] does.
    pub fn forward_with_targets(
        &self,
        images: &[Tensor],
        targets: &[Target],
    ) -> Result<(ImageList, Vec<Target>)> {
        let min_size = self.eval_min_size();
        self.forward_targets(images, targets, || min_size)
    }

    /// The training transform: each image normalized, resized with a short-side size drawn
    /// uniformly from [`Self::min_sizes`] (torchvision's `torch_choice`; its random stream
    /// cannot be reproduced, the distribution is the same), its target resized with it, and
    /// the images batched.
    ///
    /// Fails if there is no image, if images and targets differ in number
    /// ([`Error::Input`]), if a target does not fit its image (see [`Target::validate`]), or
    /// as [`Self::normalize`] and [`Self::resized_size`] do.
    pub fn forward_train<R: Rng + ?Sized>(
        &self,
        images: &[Tensor],
        targets: &[Target],
        rng: &mut R,
    ) -> Result<(ImageList, Vec<Target>)> {
        let sizes = self.min_sizes();
        self.forward_targets(images, targets, || sizes[rng.random_range(0..sizes.len())])
    }

    fn forward_targets(
        &self,
        images: &[Tensor],
        targets: &[Target],
        mut min_size: impl FnMut() -> usize,
    ) -> Result<(ImageList, Vec<Target>)> {
        if images.len() != targets.len() {
            return Err(Error::Input(format!(
                "RcnnTransform got {} images but {} targets",
                images.len(),
                targets.len()
            )));
        }
        let mut resized = Vec::with_capacity(images.len());
        let mut resized_targets = Vec::with_capacity(targets.len());
        for (i, (img, target)) in images.iter().zip(targets).enumerate() {
            let (_, h, w) = img.dims3().map_err(|_| {
                Error::Shape(format!(
                    "RcnnTransform expects (C, H, W) images, image {i} has shape {:?}",
                    img.dims()
                ))
            })?;
            target.validate((h, w)).map_err(|e| match e {
                Error::Input(msg) => Error::Input(format!("image {i}: {msg}")),
                Error::Shape(msg) => Error::Shape(format!("image {i}: {msg}")),
                e => e,
            })?;
            let (img, target) = self.resize(&self.normalize(img)?, min_size(), Some(target))?;
            resized.push(img);
            resized_targets.extend(target);
        }
        Ok((self.batch_images(&resized)?, resized_targets))
    }

    /// Maps one image's detections back to its original size (torchvision's `postprocess`
    /// in eval mode): `(K, 4)` boxes in the resized image of size `image_size` are scaled to
    /// `original_size` by [`resize_boxes`], and the `(K, 1, M, M)` mask probabilities, if
    /// any, are pasted into a `(K, 1, H, W)` image of the original size by
    /// [`paste_masks_in_image`] (padding 1).
    ///
    /// Fails as those two functions do.
    pub fn postprocess(
        &self,
        boxes: &Tensor,
        masks: Option<&Tensor>,
        image_size: (usize, usize),
        original_size: (usize, usize),
    ) -> Result<(Tensor, Option<Tensor>)> {
        let boxes = resize_boxes(boxes, image_size, original_size)?;
        let masks = match masks {
            Some(m) => Some(paste_masks_in_image(m, &boxes, original_size, 1)?),
            None => None,
        };
        Ok((boxes, masks))
    }
}
