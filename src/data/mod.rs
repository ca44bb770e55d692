//! Data for training and evaluation: samples, data sets, batches.
//!
//! A [`Dataset`] hands out [`Sample`]s (one image and its label mask, in plain vectors); a
//! [`loader::DataLoader`] shuffles them with a seed, augments them and stacks them into
//! [`Batch`]es of tensors. Two data sets come with the crate: seeded synthetic images
//! ([`synthetic`]) and a folder of image / mask pairs in PNG, TIFF or JPEG ([`folder`], read
//! by [`image_io`] and normalised by [`normalize`]); [`instances`] has seeded synthetic
//! instance segmentation (touching nuclei-like blobs) for Mask R-CNN.
//!
#![cfg_attr(not(feature = "image"), doc = "[`folder`]: crate#features")]
#![cfg_attr(not(feature = "image"), doc = "[`image_io`]: crate#features")]
#![cfg_attr(not(feature = "detection"), doc = "[`instances`]: crate#features")]

#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub mod folder;
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
pub mod image_io;
#[cfg(feature = "detection")]
#[cfg_attr(docsrs, doc(cfg(feature = "detection")))]
pub mod instances;
pub mod loader;
pub mod normalize;
pub mod synthetic;

/// The former name of [`image_io`], from when only PNG files were read.
#[cfg(feature = "image")]
#[cfg_attr(docsrs, doc(cfg(feature = "image")))]
#[deprecated(note = "renamed `data::image_io` (it reads TIFF and JPEG too)")]
pub mod png_io {
    pub use super::image_io::{
        read_image, read_mask, write_gray, write_gray16, write_indexed, write_rgb,
    };
}

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// One image and its label mask.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Pixel values, channel-major `(C, H, W)`, typically in `[0, 1]`.
    pub image: Vec<f32>,
    /// Class index of every pixel, `(H, W)`: 0 is background; a binary task uses 0 and 1.
    pub mask: Vec<u32>,
    /// `C`.
    pub channels: usize,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
}

impl Sample {
    /// A sample, checked: `image` must hold `channels · height · width` values and `mask`
    /// `height · width`.
    pub fn new(
        image: Vec<f32>,
        mask: Vec<u32>,
        channels: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        if image.len() != channels * height * width || mask.len() != height * width {
            return Err(Error::Shape(format!(
                "a {channels}x{height}x{width} sample needs {} image and {} mask values, got {} and {}",
                channels * height * width,
                height * width,
                image.len(),
                mask.len()
            )));
        }
        Ok(Self {
            image,
            mask,
            channels,
            height,
            width,
        })
    }
}

/// A data set of samples addressed by index.
pub trait Dataset {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether it holds no sample.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sample `index` (`< len()`); an index out of range is an error.
    fn get(&self, index: usize) -> Result<Sample>;

    /// Channels of every image.
    fn channels(&self) -> usize;

    /// Classes of the masks, background included (2 for a binary task).
    fn num_classes(&self) -> usize;
}

macro_rules! forward_dataset {
    ($($ty:ty),*) => {$(
        impl<D: Dataset + ?Sized> Dataset for $ty {
            fn len(&self) -> usize {
                (**self).len()
            }
            fn get(&self, index: usize) -> Result<Sample> {
                (**self).get(index)
            }
            fn channels(&self) -> usize {
                (**self).channels()
            }
            fn num_classes(&self) -> usize {
                (**self).num_classes()
            }
        }
    )*};
}

forward_dataset!(&D, Box<D>, std::sync::Arc<D>);

/// Some samples of another data set, in a given order (for a train / validation split).
///
/// ```
/// use unetpp::data::{synthetic::{SyntheticConfig, SyntheticDataset}, Dataset, Subset};
/// let all = SyntheticDataset::new(SyntheticConfig::builder().samples(10).build()?)?;
/// let val = Subset::new(&all, (8..10).collect())?;
/// assert_eq!(val.len(), 2);
/// assert_eq!(val.get(0)?, all.get(8)?);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Subset<D> {
    inner: D,
    indices: Vec<usize>,
}

impl<D: Dataset> Subset<D> {
    /// The samples `indices` of `inner`; an index out of range is an error.
    pub fn new(inner: D, indices: Vec<usize>) -> Result<Self> {
        if let Some(&i) = indices.iter().find(|&&i| i >= inner.len()) {
            return Err(Error::Input(format!(
                "subset index {i} out of range for a data set of {} samples",
                inner.len()
            )));
        }
        Ok(Self { inner, indices })
    }
}

impl<D: Dataset> Dataset for Subset<D> {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let &i = self.indices.get(index).ok_or_else(|| {
            Error::Input(format!(
                "index {index} out of range for a subset of {} samples",
                self.indices.len()
            ))
        })?;
        self.inner.get(i)
    }

    fn channels(&self) -> usize {
        self.inner.channels()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }
}

/// A batch of images with their masks as tensors.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images `(N, C, H, W)`, `f32`.
    pub images: Tensor,
    /// Foreground masks `(N, 1, H, W)`, `f32`: 1 where the label is not background. The
    /// target of binary losses.
    pub masks: Tensor,
    /// Class labels `(N, H, W)`, `u32`. The target of multi-class losses.
    pub labels: Tensor,
}

impl Batch {
    /// Stacks samples of equal size into a batch on `device`.
    pub fn from_samples(samples: &[Sample], device: &Device) -> Result<Self> {
        let first = samples
            .first()
            .ok_or_else(|| Error::Shape("cannot make a batch of no samples".into()))?;
        let (c, h, w) = (first.channels, first.height, first.width);
        let n = samples.len();
        let mut images = Vec::with_capacity(n * c * h * w);
        let mut labels = Vec::with_capacity(n * h * w);
        for (i, s) in samples.iter().enumerate() {
            if (s.channels, s.height, s.width) != (c, h, w) {
                return Err(Error::Shape(format!(
                    "sample {i} is {}x{}x{} but sample 0 is {c}x{h}x{w}; a batch needs equal sizes",
                    s.channels, s.height, s.width
                )));
            }
            if s.image.len() != c * h * w || s.mask.len() != h * w {
                return Err(Error::Shape(format!(
                    "sample {i} holds {} image and {} mask values for {c}x{h}x{w}",
                    s.image.len(),
                    s.mask.len()
                )));
            }
            images.extend_from_slice(&s.image);
            labels.extend_from_slice(&s.mask);
        }
        let masks: Vec<f32> = labels.iter().map(|&l| (l > 0) as u8 as f32).collect();
        Ok(Self {
            images: Tensor::from_vec(images, (n, c, h, w), device)?,
            masks: Tensor::from_vec(masks, (n, 1, h, w), device)?,
            labels: Tensor::from_vec(labels, (n, h, w), device)?,
        })
    }
}
