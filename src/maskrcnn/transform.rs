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

use std::ops::{Add, Mul, Sub};

use candle_core::{DType, Device, Tensor};
use rand::Rng;

use crate::ops::resize_bilinear;
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

/// The ground truth of one training image: torchvision's target dictionary (`boxes`, `labels`,
/// `masks`).
#[derive(Debug, Clone)]
pub struct Target {
    /// `(K, 4)` boxes `x1, y1, x2, y2` in pixels, floating point.
    pub boxes: Tensor,
    /// `(K,)` class labels, an integer dtype (`u8`, `u32` or `i64`); 0 is the background.
    pub labels: Tensor,
    /// `(K, H, W)` instance masks of the image's size, any dtype (torchvision uses `u8`).
    pub masks: Option<Tensor>,
}

impl Target {
    /// A target of boxes and labels, without masks.
    pub fn new(boxes: Tensor, labels: Tensor) -> Self {
        Target {
            boxes,
            labels,
            masks: None,
        }
    }

    /// The same target with instance masks.
    pub fn with_masks(mut self, masks: Tensor) -> Self {
        self.masks = Some(masks);
        self
    }

    /// The number of instances `K`.
    pub fn len(&self) -> usize {
        self.boxes.dims().first().copied().unwrap_or(0)
    }

    /// Whether the target has no instance.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the target against its image of size `image_size = (H, W)`.
    ///
    /// Fails with [`Error::Shape`] if the boxes are not `(K, 4)`, the labels not 1-D or the
    /// masks not 3-D, and with [`Error::Input`] if the boxes are not floating point or the
    /// labels not integers, if labels or masks do not hold `K` instances, if the masks are
    /// not `H × W`, or if a box has a non-finite coordinate, is not inside the image
    /// (`0 ≤ x1`, `x2 ≤ W`, likewise for y) or has no area (`x2 ≤ x1` or `y2 ≤ y1`, which
    /// torchvision's `GeneralizedRCNN` rejects too).
    pub fn validate(&self, image_size: (usize, usize)) -> Result<()> {
        let (k, four) = self.boxes.dims2().map_err(|_| {
            Error::Shape(format!(
                "target boxes must be (K, 4), got shape {:?}",
                self.boxes.dims()
            ))
        })?;
        if four != 4 {
            return Err(Error::Shape(format!(
                "target boxes must be (K, 4), got shape {:?}",
                self.boxes.dims()
            )));
        }
        if !self.boxes.dtype().is_float() {
            return Err(Error::Input(format!(
                "target boxes must be floating point, got {:?}",
                self.boxes.dtype()
            )));
        }
        let n_labels = self.labels.dims1().map_err(|_| {
            Error::Shape(format!(
                "target labels must be 1-D, got shape {:?}",
                self.labels.dims()
            ))
        })?;
        if !matches!(self.labels.dtype(), DType::U8 | DType::U32 | DType::I64) {
            return Err(Error::Input(format!(
                "target labels must be u8, u32 or i64, got {:?}",
                self.labels.dtype()
            )));
        }
        if n_labels != k {
            return Err(Error::Input(format!(
                "target has {k} boxes but {n_labels} labels"
            )));
        }
        let (h, w) = image_size;
        if let Some(masks) = &self.masks {
            let (km, mh, mw) = masks.dims3().map_err(|_| {
                Error::Shape(format!(
                    "target masks must be (K, H, W), got shape {:?}",
                    masks.dims()
                ))
            })?;
            if km != k {
                return Err(Error::Input(format!("target has {k} boxes but {km} masks")));
            }
            if (mh, mw) != (h, w) {
                return Err(Error::Input(format!(
                    "target masks are {mh}x{mw}, their image is {h}x{w}"
                )));
            }
        }
        let boxes = self.boxes.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        for (i, b) in boxes.iter().enumerate() {
            let [x1, y1, x2, y2] = [b[0], b[1], b[2], b[3]];
            if b.iter().any(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "target box {i} has a non-finite coordinate: {b:?}"
                )));
            }
            if x2 <= x1 || y2 <= y1 {
                return Err(Error::Input(format!(
                    "target box {i} has no area (needs x2 > x1 and y2 > y1): {b:?}"
                )));
            }
            if x1 < 0.0 || y1 < 0.0 || x2 > w as f64 || y2 > h as f64 {
                return Err(Error::Input(format!(
                    "target box {i} {b:?} is not inside its {h}x{w} image"
                )));
            }
        }
        Ok(())
    }
}

/// Normalizes, resizes and batches images for a detector, and maps its detections back:
/// torchvision's `torchvision.models.detection.transform.GeneralizedRCNNTransform`.
///
/// Build one with [`RcnnTransform::mask_rcnn`], chain setters on the returned
/// [`RcnnTransformBuilder`], then call [`RcnnTransformBuilder::build`].
#[derive(Debug, Clone, PartialEq)]
pub struct RcnnTransform {
    min_sizes: Vec<usize>,
    max_size: usize,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
    size_divisible: usize,
    fixed_size: Option<(usize, usize)>,
}

/// Chained setters for an [`RcnnTransform`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone)]
pub struct RcnnTransformBuilder {
    cfg: RcnnTransform,
}

impl RcnnTransform {
    /// torchvision's Mask R-CNN settings: short side 800, long side at most 1333, ImageNet
    /// mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225), batches
    /// padded to multiples of 32, no fixed size.
    pub fn mask_rcnn() -> RcnnTransformBuilder {
        RcnnTransformBuilder {
            cfg: RcnnTransform {
                min_sizes: vec![800],
                max_size: 1333,
                image_mean: vec![0.485, 0.456, 0.406],
                image_std: vec![0.229, 0.224, 0.225],
                size_divisible: 32,
                fixed_size: None,
            },
        }
    }

    /// The short-side sizes: training draws one per image, inference uses the last.
    pub fn min_sizes(&self) -> &[usize] {
        &self.min_sizes
    }

    /// The largest long side after resizing.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// The per-channel mean subtracted from the images.
    pub fn image_mean(&self) -> &[f64] {
        &self.image_mean
    }

    /// The per-channel standard deviation the images are divided by.
    pub fn image_std(&self) -> &[f64] {
        &self.image_std
    }

    /// The multiple the batch's height and width are padded to.
    pub fn size_divisible(&self) -> usize {
        self.size_divisible
    }

    /// The `(height, width)` every image is resized to, if set.
    pub fn fixed_size(&self) -> Option<(usize, usize)> {
        self.fixed_size
    }

    /// The short-side size inference uses: the last of [`Self::min_sizes`].
    pub fn eval_min_size(&self) -> usize {
        // `build` guarantees at least one size.
        self.min_sizes.last().copied().unwrap_or(0)
    }

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
        if c != self.image_mean.len() {
            return Err(Error::Shape(format!(
                "RcnnTransform has a mean for {} channels, the image has {c}",
                self.image_mean.len()
            )));
        }
        if !image.dtype().is_float() {
            return Err(Error::Input(format!(
                "RcnnTransform expects floating-point images (values in [0, 1]), got {:?}",
                image.dtype()
            )));
        }
        let stat = |values: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(values, (c, 1, 1), image.device())?.to_dtype(image.dtype())?)
        };
        let (mean, std) = (stat(&self.image_mean)?, stat(&self.image_std)?);
        Ok(image.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// The `(height, width)` an image of size `(h, w)` is resized to with short-side size
    /// `min_size`: the fixed size if set, otherwise `(⌊h·s⌋, ⌊w·s⌋)` with
    /// `s = min(min_size / min(h, w), max_size / max(h, w))`, all in f64 as PyTorch's
    /// `interpolate(scale_factor=s, recompute_scale_factor=True)` computes it.
    ///
    /// The product can round below an integer: a short side of 97 with `min_size` 800 gives
    /// 799, as in torchvision.
    ///
    /// Fails with [`Error::Shape`] if the image or the result is empty.
    pub fn resized_size(&self, size: (usize, usize), min_size: usize) -> Result<(usize, usize)> {
        let (h, w) = size;
        if h == 0 || w == 0 {
            return Err(Error::Shape(format!(
                "RcnnTransform needs non-empty images, got {h}x{w}"
            )));
        }
        let out = match self.fixed_size {
            Some(fixed) => fixed,
            None => {
                let (short, long) = (h.min(w) as f64, h.max(w) as f64);
                let scale = (min_size as f64 / short).min(self.max_size as f64 / long);
                ((h as f64 * scale) as usize, (w as f64 * scale) as usize)
            }
        };
        if out.0 == 0 || out.1 == 0 {
            return Err(Error::Shape(format!(
                "RcnnTransform would resize the {h}x{w} image to {}x{}",
                out.0, out.1
            )));
        }
        Ok(out)
    }

    /// Resizes a `(C, H, W)` image with short-side size `min_size` (see
    /// [`Self::resized_size`]) by bilinear interpolation (`align_corners = false`), and its
    /// target with it: boxes by [`resize_boxes`], masks by nearest neighbour with PyTorch's
    /// rule (source index `⌊dst · in / out⌋`, in f32), keeping their dtype.
    ///
    /// The target is not validated here; [`Self::forward_train`] does it.
    pub fn resize(
        &self,
        image: &Tensor,
        min_size: usize,
        target: Option<&Target>,
    ) -> Result<(Tensor, Option<Target>)> {
        let (_, h, w) = image.dims3().map_err(|_| {
            Error::Shape(format!(
                "RcnnTransform expects (C, H, W) images, got shape {:?}",
                image.dims()
            ))
        })?;
        let (oh, ow) = self.resized_size((h, w), min_size)?;
        let resized = resize_bilinear(&image.unsqueeze(0)?, oh, ow, false)?.squeeze(0)?;
        let target = match target {
            None => None,
            Some(t) => Some(Target {
                boxes: resize_boxes(&t.boxes, (h, w), (oh, ow))?,
                labels: t.labels.clone(),
                masks: match &t.masks {
                    Some(m) => Some(resize_nearest(m, oh, ow)?),
                    None => None,
                },
            }),
        };
        Ok((resized, target))
    }

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
        let round_up = |v: usize| v.div_ceil(self.size_divisible) * self.size_divisible;
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
        let sizes = &self.min_sizes;
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

impl RcnnTransformBuilder {
    /// A single short-side size (the paper's 800).
    pub fn min_size(mut self, size: usize) -> Self {
        self.cfg.min_sizes = vec![size];
        self
    }
    /// Several short-side sizes: training draws one per image (multi-scale training),
    /// inference uses the last.
    pub fn min_sizes(mut self, sizes: impl Into<Vec<usize>>) -> Self {
        self.cfg.min_sizes = sizes.into();
        self
    }
    /// The largest long side after resizing.
    pub fn max_size(mut self, size: usize) -> Self {
        self.cfg.max_size = size;
        self
    }
    /// The per-channel mean; its length is the number of channels images must have.
    pub fn image_mean(mut self, mean: impl Into<Vec<f64>>) -> Self {
        self.cfg.image_mean = mean.into();
        self
    }
    /// The per-channel standard deviation.
    pub fn image_std(mut self, std: impl Into<Vec<f64>>) -> Self {
        self.cfg.image_std = std.into();
        self
    }
    /// The multiple the batch's height and width are padded to (the backbone's stride).
    pub fn size_divisible(mut self, multiple: usize) -> Self {
        self.cfg.size_divisible = multiple;
        self
    }
    /// Resize every image to `(height, width)` instead, ignoring `min_size` and `max_size`;
    /// `None` turns it off. torchvision's `fixed_size` tuple is `(width, height)`: pass its
    /// values swapped.
    pub fn fixed_size(mut self, size: Option<(usize, usize)>) -> Self {
        self.cfg.fixed_size = size;
        self
    }

    /// Validates the settings; an [`Error::Config`] names the first bad field.
    pub fn build(self) -> Result<RcnnTransform> {
        let cfg = self.cfg;
        if cfg.min_sizes.is_empty() {
            return Err(Error::config("min_size", "needs at least one size"));
        }
        if cfg.min_sizes.contains(&0) {
            return Err(Error::config(
                "min_size",
                format!("sizes must be positive, got {:?}", cfg.min_sizes),
            ));
        }
        if cfg.max_size == 0 {
            return Err(Error::config("max_size", "must be positive"));
        }
        if cfg.image_mean.is_empty() {
            return Err(Error::config("image_mean", "needs one value per channel"));
        }
        if let Some(v) = cfg.image_mean.iter().find(|v| !v.is_finite()) {
            return Err(Error::config("image_mean", format!("{v} is not finite")));
        }
        if cfg.image_std.len() != cfg.image_mean.len() {
            return Err(Error::config(
                "image_std",
                format!(
                    "needs one value per channel as image_mean: {} means, {} stds",
                    cfg.image_mean.len(),
                    cfg.image_std.len()
                ),
            ));
        }
        if let Some(v) = cfg.image_std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(Error::config(
                "image_std",
                format!("{v} is not a positive finite number"),
            ));
        }
        if cfg.size_divisible == 0 {
            return Err(Error::config("size_divisible", "must be positive"));
        }
        if let Some((h, w)) = cfg.fixed_size {
            if h == 0 || w == 0 {
                return Err(Error::config(
                    "fixed_size",
                    format!("must be non-empty, got {h}x{w}"),
                ));
            }
        }
        Ok(cfg)
    }
}

/// Scales `(K, 4)` boxes `x1, y1, x2, y2` from an image of size `from = (h, w)` to one of
/// size `to`: x by `to.w / from.w`, y by `to.h / from.h`, the ratios computed in f32 as
/// torchvision's `resize_boxes` computes them, then applied in the boxes' dtype.
///
/// Fails if the boxes are not `(K, 4)` ([`Error::Shape`]) or not floating point, or if a
/// size is empty ([`Error::Input`]).
pub fn resize_boxes(boxes: &Tensor, from: (usize, usize), to: (usize, usize)) -> Result<Tensor> {
    match boxes.dims2() {
        Ok((_, 4)) => {}
        _ => {
            return Err(Error::Shape(format!(
                "resize_boxes expects (K, 4) boxes, got shape {:?}",
                boxes.dims()
            )))
        }
    }
    if !boxes.dtype().is_float() {
        return Err(Error::Input(format!(
            "resize_boxes expects floating-point boxes, got {:?}",
            boxes.dtype()
        )));
    }
    if from.0 == 0 || from.1 == 0 || to.0 == 0 || to.1 == 0 {
        return Err(Error::Input(format!(
            "resize_boxes needs non-empty sizes, got {}x{} -> {}x{}",
            from.0, from.1, to.0, to.1
        )));
    }
    let ratio_h = to.0 as f32 / from.0 as f32;
    let ratio_w = to.1 as f32 / from.1 as f32;
    let ratios = Tensor::new(&[[ratio_w, ratio_h, ratio_w, ratio_h]], boxes.device())?
        .to_dtype(boxes.dtype())?;
    Ok(boxes.broadcast_mul(&ratios)?)
}

/// Resizes `(K, H, W)` masks to `(K, out_h, out_w)` by nearest neighbour, PyTorch's
/// `F.interpolate(mode="nearest")`: source index `min(⌊dst · (in / out)⌋, in − 1)` in f32.
fn resize_nearest(masks: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (k, h, w) = masks.dims3().map_err(|_| {
        Error::Shape(format!(
            "target masks must be (K, H, W), got shape {:?}",
            masks.dims()
        ))
    })?;
    if k == 0 || h == 0 || w == 0 {
        return Ok(Tensor::zeros(
            (k, out_h, out_w),
            masks.dtype(),
            masks.device(),
        )?);
    }
    let index = |input: usize, output: usize| -> Result<Tensor> {
        let idx: Vec<u32> = (0..output)
            .map(|dst| super::resample::nearest_index(dst, input, output) as u32)
            .collect();
        Ok(Tensor::from_vec(idx, output, masks.device())?)
    };
    Ok(masks
        .index_select(&index(h, out_h)?, 1)?
        .index_select(&index(w, out_w)?, 2)?)
}

/// Pastes `(K, 1, M_h, M_w)` mask probabilities into `(K, 1, H, W)` images of size
/// `image_size = (H, W)`, each into its `(K, 4)` box: torchvision's `paste_masks_in_image`.
///
/// As torchvision does it, each mask gets a border of `padding` zeros, and its box grows
/// about its centre by the same factor `(M_w + 2·padding) / M_w` (computed in the boxes'
/// dtype, f32 unless f64) and is truncated toward zero to integers `x1, y1, x2, y2`. The
/// padded mask is resized bilinearly (`align_corners = false`, in f32) to
/// `max(y2 − y1 + 1, 1) × max(x2 − x1 + 1, 1)` and its part inside the image, rows
/// `max(y1, 0)..min(y2 + 1, H)` and columns likewise, is copied into a zero image; only
/// that part is computed. The result has the masks' dtype and device; no gradient flows.
///
/// A box wholly outside the image pastes nothing. torchvision raises a shape error for some
/// of those (a box ending left of or above the image by more than a pixel, or starting more
/// than a pixel right of or below it), as its negative slice bounds wrap around.
///
/// Fails if the masks are not `(K, 1, M_h, M_w)` with non-empty masks or the boxes not
/// `(K, 4)` ([`Error::Shape`]), or if a box has a non-finite coordinate ([`Error::Input`]).
pub fn paste_masks_in_image(
    masks: &Tensor,
    boxes: &Tensor,
    image_size: (usize, usize),
    padding: usize,
) -> Result<Tensor> {
    let (k, c, mh, mw) = masks.dims4().map_err(|_| {
        Error::Shape(format!(
            "paste_masks_in_image expects (K, 1, M, M) masks, got shape {:?}",
            masks.dims()
        ))
    })?;
    if c != 1 || mh == 0 || mw == 0 {
        return Err(Error::Shape(format!(
            "paste_masks_in_image expects (K, 1, M, M) masks, got shape {:?}",
            masks.dims()
        )));
    }
    match boxes.dims2() {
        Ok((kb, 4)) if kb == k => {}
        _ => {
            return Err(Error::Shape(format!(
                "paste_masks_in_image expects ({k}, 4) boxes for {k} masks, got shape {:?}",
                boxes.dims()
            )))
        }
    }
    let (im_h, im_w) = image_size;
    let mut canvas = vec![0f32; k * im_h * im_w];
    if k > 0 {
        let boxes = expand_boxes(boxes, (mw + 2 * padding) as f64 / mw as f64)?;
        let values = masks
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (ph, pw) = (mh + 2 * padding, mw + 2 * padding);
        let mut padded = vec![0f32; ph * pw];
        for (i, (mask, b)) in values.chunks_exact(mh * mw).zip(&boxes).enumerate() {
            for (y, row) in mask.chunks_exact(mw).enumerate() {
                let start = (y + padding) * pw + padding;
                padded[start..start + mw].copy_from_slice(row);
            }
            let out = &mut canvas[i * im_h * im_w..(i + 1) * im_h * im_w];
            paste_one(&padded, (ph, pw), *b, (im_h, im_w), out);
        }
    }
    Ok(Tensor::from_vec(canvas, (k, 1, im_h, im_w), masks.device())?.to_dtype(masks.dtype())?)
}

/// torchvision's `expand_boxes` followed by `.to(torch.int64)`: each box's half-sizes scaled
/// about its centre, in the boxes' dtype, then truncated toward zero.
fn expand_boxes(boxes: &Tensor, scale: f64) -> Result<Vec<[i64; 4]>> {
    fn expand<T: BoxFloat>(b: &[T], scale: T) -> [i64; 4] {
        let half = T::from_f64(0.5);
        let w_half = (b[2] - b[0]) * half * scale;
        let h_half = (b[3] - b[1]) * half * scale;
        let x_c = (b[2] + b[0]) * half;
        let y_c = (b[3] + b[1]) * half;
        [x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half].map(T::trunc_i64)
    }
    let check = |i: usize, finite: bool| -> Result<()> {
        if finite {
            Ok(())
        } else {
            Err(Error::Input(format!(
                "paste_masks_in_image: box {i} has a non-finite coordinate"
            )))
        }
    };
    if boxes.dtype() == DType::F64 {
        let rows = boxes.to_vec2::<f64>()?;
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                check(i, b.iter().all(|v| v.is_finite()))?;
                Ok(expand(b, scale))
            })
            .collect()
    } else {
        let rows = boxes.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        rows.iter()
            .enumerate()
            .map(|(i, b)| {
                check(i, b.iter().all(|v| v.is_finite()))?;
                Ok(expand(b, scale as f32))
            })
            .collect()
    }
}

/// The two floating-point types [`expand_boxes`] computes in.
trait BoxFloat: Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> {
    fn from_f64(v: f64) -> Self;
    /// Truncation toward zero, as PyTorch's float-to-int64 conversion does (saturating
    /// where PyTorch's is undefined).
    fn trunc_i64(self) -> i64;
}

impl BoxFloat for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn trunc_i64(self) -> i64 {
        // Bounded so that the pasting arithmetic cannot overflow; far outside any image.
        self.clamp(-1e12, 1e12) as i64
    }
}

impl BoxFloat for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn trunc_i64(self) -> i64 {
        self.clamp(-1e12, 1e12) as i64
    }
}

/// torchvision's `paste_mask_in_image` for one padded `(ph, pw)` mask and integer box,
/// writing into `out`, an `im_h × im_w` zero image.
fn paste_one(
    mask: &[f32],
    (ph, pw): (usize, usize),
    b: [i64; 4],
    (im_h, im_w): (usize, usize),
    out: &mut [f32],
) {
    let w = (b[2] - b[0] + 1).max(1);
    let h = (b[3] - b[1] + 1).max(1);
    let x0 = b[0].max(0);
    let x1 = (b[2] + 1).min(im_w as i64);
    let y0 = b[1].max(0);
    let y1 = (b[3] + 1).min(im_h as i64);
    if x1 <= x0 || y1 <= y0 {
        return;
    }
    // The window's rows and columns in the mask resized to h × w.
    let cols = LinearTaps::new(pw, w, x0 - b[0], x1 - b[0]);
    let rows = LinearTaps::new(ph, h, y0 - b[1], y1 - b[1]);
    for (y, r) in (y0 as usize..y1 as usize).zip(&rows.taps) {
        let (top, bottom) = (&mask[r.i0 * pw..][..pw], &mask[r.i1 * pw..][..pw]);
        let line = &mut out[y * im_w..(y + 1) * im_w];
        for (x, c) in (x0 as usize..x1 as usize).zip(&cols.taps) {
            let t = top[c.i0] * c.w0 + top[c.i1] * c.w1;
            let u = bottom[c.i0] * c.w0 + bottom[c.i1] * c.w1;
            line[x] = t * r.w0 + u * r.w1;
        }
    }
}

/// Source indices and weights of output positions `start..end` of a bilinear resize along
/// one axis from `input` to `output` (`align_corners = false`), computed in f32 as PyTorch's
/// CPU kernel does for f32 tensors.
struct LinearTaps {
    taps: Vec<Tap>,
}

struct Tap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

impl LinearTaps {
    fn new(input: usize, output: i64, start: i64, end: i64) -> Self {
        let scale = input as f32 / output as f32;
        let taps = (start..end)
            .map(|dst| {
                let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(input - 1);
                let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
                let l1 = (src - i0 as f32).clamp(0.0, 1.0);
                Tap {
                    i0,
                    i1,
                    w0: 1.0 - l1,
                    w1: l1,
                }
            })
            .collect();
        LinearTaps { taps }
    }
}
