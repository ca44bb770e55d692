//! Batching resized images: padded to one size divisible by the backbone's stride.

use candle_core::Tensor;

use super::RcnnTransform;
use crate::{Error, Result};

/// A batch of images padded to one size, with the size of each before padding:
/// torchvision's `ImageList`.
#[derive(Debug, Clone)]
pub struct ImageList {
    /// The padded images, `(N, C, H, W)`, each image in the top-left corner, zeros elsewhere.
    pub tensors: Tensor,
    /// The `(height, width)` of each image in the batch, before padding.
    pub image_sizes: Vec<(usize, usize)>,
}

impl RcnnTransform {
    /// Pads `(C, H, W)` images with zeros at the bottom and right to the largest channel
    /// count, height and width among them, height and width rounded up to a multiple of
    /// [`Self::size_divisible`], and stacks them.
    ///
    /// Fails with [`Error::Input`] if there is no image, [`Error::Shape`] if one is not 3-D.
    pub fn batch_images(&self, images: &[Tensor]) -> Result<ImageList> {
        if images.is_empty() {
            return Err(Error::Input("RcnnTransform: no images to batch".into()));
        }
        let dims = images
            .iter()
            .map(|img| {
                img.dims3().map_err(|_| {
                    Error::Shape(format!(
                        "RcnnTransform expects (C, H, W) images, got shape {:?}",
                        img.dims()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let round_up = |v: usize| v.div_ceil(self.size_divisible()) * self.size_divisible();
        let c = dims.iter().map(|d| d.0).max().unwrap_or(0);
        let hp = round_up(dims.iter().map(|d| d.1).max().unwrap_or(0));
        let wp = round_up(dims.iter().map(|d| d.2).max().unwrap_or(0));
        let padded = images
            .iter()
            .zip(&dims)
            .map(|(img, &(ci, h, w))| {
                Ok(img
                    .pad_with_zeros(0, 0, c - ci)?
                    .pad_with_zeros(1, 0, hp - h)?
                    .pad_with_zeros(2, 0, wp - w)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ImageList {
            tensors: Tensor::stack(&padded, 0)?,
            image_sizes: dims.iter().map(|&(_, h, w)| (h, w)).collect(),
        })
    }
}
