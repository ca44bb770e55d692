//! Anchor boxes over the feature maps of a backbone, as torchvision's `AnchorGenerator` makes
//! them.
//!
//! Every location of a feature map carries the same set of *cell anchors*, one per
//! (aspect ratio, size) pair, centred on the location's offset in the image (Faster R-CNN,
//! Ren et al. 2015, §3.1.1). With a feature pyramid (FPN, Lin et al. 2017, §4.1) each level
//! has its own size: 32 on the stride-4 map up to 512 on the stride-64 map, three aspect
//! ratios each ([`AnchorGenerator::fpn`]).
//!
//! The anchors depend only on sizes, not on the images' values, so they are computed on the
//! host (in f32, as torchvision computes them), converted there and copied to the device;
//! the generator keeps those of the last few image sizes, so that a training loop over
//! images of a few sizes builds and uploads them once per size.
//!
//! ```
//! use candle_core::Device;
//! use unetpp::maskrcnn::AnchorGenerator;
//!
//! let gen = AnchorGenerator::fpn();
//! assert_eq!(gen.num_anchors_per_location(), vec![3; 5]);
//! // A 64×64 image and its five FPN maps (strides 4, 8, 16, 32, 64).
//! let grids = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)];
//! let anchors = gen.anchors((64, 64), &grids, &Device::Cpu)?;
//! assert_eq!(anchors.dims(), &[3 * (256 + 64 + 16 + 4 + 1), 4]);
//! # Ok::<(), unetpp::Error>(())
//! ```

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};

use crate::ops::host_tensor;
use crate::{Error, Result};

/// How many sets of anchors (image size, grid sizes, dtype, device) a generator keeps: a
/// multi-scale training loop pads its batches to a handful of sizes.
const CACHED_SETS: usize = 8;

/// Generates anchors for a set of feature maps: torchvision's
/// `torchvision.models.detection.anchor_utils.AnchorGenerator`.
///
/// An aspect ratio is height / width. Level `l` has `sizes[l].len() · aspect_ratios[l].len()`
/// anchors per location.
///
/// Under the `serde` feature it (de)serialises as its `sizes` and `aspect_ratios`;
/// deserialising checks them as [`AnchorGenerator::new`] does.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(
    feature = "serde",
    serde(try_from = "AnchorSettings", into = "AnchorSettings")
)]
pub struct AnchorGenerator {
    sizes: Vec<Vec<f64>>,
    aspect_ratios: Vec<Vec<f64>>,
    /// Per level, the zero-centred cell anchors `x1, y1, x2, y2`, ratio-major, size-minor.
    cell_anchors: Vec<Vec<[f32; 4]>>,
    /// The anchors of the last image sizes asked for, shared by clones (the settings above
    /// never change).
    cache: AnchorCache,
}

impl AnchorGenerator {
    /// A generator with, for each feature level, its anchor sizes (the square root of the
    /// area, in pixels) and aspect ratios.
    ///
    /// Fails if the two lists differ in length or are empty, if a level has no size or no
    /// ratio, or if a size or ratio is not a positive finite number.
    pub fn new(sizes: Vec<Vec<f64>>, aspect_ratios: Vec<Vec<f64>>) -> Result<Self> {
        if sizes.is_empty() {
            return Err(Error::config("sizes", "need at least one feature level"));
        }
        if sizes.len() != aspect_ratios.len() {
            return Err(Error::config(
                "aspect_ratios",
                format!(
                    "need one list per feature level: {} levels of sizes, {} of aspect ratios",
                    sizes.len(),
                    aspect_ratios.len()
                ),
            ));
        }
        for (field, lists) in [("sizes", &sizes), ("aspect_ratios", &aspect_ratios)] {
            for (level, values) in lists.iter().enumerate() {
                if values.is_empty() {
                    return Err(Error::config(field, format!("level {level} is empty")));
                }
                if let Some(v) = values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(Error::config(
                        field,
                        format!("level {level}: {v} is not a positive finite number"),
                    ));
                }
            }
        }
        Ok(Self::validated(sizes, aspect_ratios))
    }

    /// torchvision's Mask R-CNN (FPN) anchors: one size per level, 32, 64, 128, 256, 512,
    /// and aspect ratios 0.5, 1, 2 on every level.
    pub fn fpn() -> Self {
        let sizes: Vec<Vec<f64>> = [32.0, 64.0, 128.0, 256.0, 512.0]
            .iter()
            .map(|&s| vec![s])
            .collect();
        let aspect_ratios = vec![vec![0.5, 1.0, 2.0]; sizes.len()];
        Self::validated(sizes, aspect_ratios)
    }

    /// The generator for sizes and ratios that [`AnchorGenerator::new`] accepts (the caller
    /// vouches for them).
    pub(super) fn validated(sizes: Vec<Vec<f64>>, aspect_ratios: Vec<Vec<f64>>) -> Self {
        let cell_anchors = sizes
            .iter()
            .zip(&aspect_ratios)
            .map(|(s, r)| cell_anchors(s, r))
            .collect();
        AnchorGenerator {
            sizes,
            aspect_ratios,
            cell_anchors,
            cache: AnchorCache::default(),
        }
    }

    /// The anchor sizes of each level.
    pub fn sizes(&self) -> &[Vec<f64>] {
        &self.sizes
    }

    /// The aspect ratios (height / width) of each level.
    pub fn aspect_ratios(&self) -> &[Vec<f64>] {
        &self.aspect_ratios
    }

    /// The number of feature levels.
    pub fn num_levels(&self) -> usize {
        self.sizes.len()
    }

    /// The number of anchors at each location, per level.
    pub fn num_anchors_per_location(&self) -> Vec<usize> {
        self.cell_anchors.iter().map(Vec::len).collect()
    }

    /// The zero-centred cell anchors of each level, `(A_l, 4)` f32 tensors on `device`.
    ///
    /// Row `i · sizes[l].len() + j` has aspect ratio `i` and size `j`: with `h = √ratio`,
    /// `w = 1 / h`, it is `(−w·size, −h·size, w·size, h·size) / 2` computed in f32 and
    /// rounded half to even, as `torch.round` does.
    pub fn cell_anchors(&self, device: &Device) -> Result<Vec<Tensor>> {
        self.cell_anchors
            .iter()
            .map(|cells| {
                boxes_tensor(
                    cells.iter().flatten().copied().collect(),
                    DType::F32,
                    device,
                )
            })
            .collect()
    }

    /// The anchors of each level for an image tensor of size `image_size = (H, W)` (the
    /// padded batch, as torchvision uses) and feature maps of sizes `grid_sizes`, one
    /// `(gh, gw)` per level: one `(gh · gw · A_l, 4)` f32 tensor per level.
    ///
    /// The stride of a level is the integer quotient `(H / gh, W / gw)`, so a map whose size
    /// is rounded up from the image's gets a smaller stride than the backbone's (torchvision
    /// does the same). Location `(y, x)` is shifted by `(x · stride_w, y · stride_h)`;
    /// anchors are ordered by location, row-major, then by cell anchor.
    pub fn anchors_per_level(
        &self,
        image_size: (usize, usize),
        grid_sizes: &[(usize, usize)],
        device: &Device,
    ) -> Result<Vec<Tensor>> {
        self.check_sizes(image_size, grid_sizes)?;
        self.level_data(image_size, grid_sizes)
            .into_iter()
            .map(|data| boxes_tensor(data, DType::F32, device))
            .collect()
    }

    /// The anchors of every level concatenated in level order, `(Σ gh · gw · A_l, 4)` f32:
    /// what torchvision's `AnchorGenerator.forward` returns for each image of a batch.
    /// See [`AnchorGenerator::anchors_per_level`].
    ///
    /// The generator keeps the anchors of the last few sizes asked for (and their clones
    /// share them): asking again for the same sizes on the same device returns the same
    /// tensor without building it.
    pub fn anchors(
        &self,
        image_size: (usize, usize),
        grid_sizes: &[(usize, usize)],
        device: &Device,
    ) -> Result<Tensor> {
        self.anchors_as(image_size, grid_sizes, DType::F32, device)
    }

    /// [`Self::anchors`] in `dtype`, converted from f32 on the host (never an f64 tensor on
    /// the device); kept per dtype as well.
    pub(crate) fn anchors_as(
        &self,
        image_size: (usize, usize),
        grid_sizes: &[(usize, usize)],
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        self.check_sizes(image_size, grid_sizes)?;
        let key = AnchorKey {
            image_size,
            grid_sizes: grid_sizes.to_vec(),
            dtype,
        };
        if let Some(found) = self.cache.get(&key, device) {
            return Ok(found);
        }
        let data = self.level_data(image_size, grid_sizes).concat();
        let anchors = boxes_tensor(data, dtype, device)?;
        self.cache.insert(key, device, &anchors);
        Ok(anchors)
    }

    /// An `Error::Shape` unless there is one non-empty grid per level and the image is not
    /// empty.
    fn check_sizes(&self, image_size: (usize, usize), grid_sizes: &[(usize, usize)]) -> Result<()> {
        if grid_sizes.len() != self.num_levels() {
            return Err(Error::Shape(format!(
                "AnchorGenerator has {} feature levels, got {} grid sizes",
                self.num_levels(),
                grid_sizes.len()
            )));
        }
        let (img_h, img_w) = image_size;
        if img_h == 0 || img_w == 0 {
            return Err(Error::Shape(format!(
                "AnchorGenerator needs a non-empty image, got {img_h}x{img_w}"
            )));
        }
        if let Some((level, (gh, gw))) = grid_sizes
            .iter()
            .enumerate()
            .find(|(_, (gh, gw))| *gh == 0 || *gw == 0)
        {
            return Err(Error::Shape(format!(
                "AnchorGenerator needs non-empty feature maps, level {level} is {gh}x{gw}"
            )));
        }
        Ok(())
    }

    /// Per level, the anchors' `x1, y1, x2, y2` in f32, for sizes [`Self::check_sizes`]
    /// accepts.
    fn level_data(
        &self,
        image_size: (usize, usize),
        grid_sizes: &[(usize, usize)],
    ) -> Vec<Vec<f32>> {
        let (img_h, img_w) = image_size;
        grid_sizes
            .iter()
            .zip(&self.cell_anchors)
            .map(|(&(gh, gw), cells)| {
                let (stride_h, stride_w) = (img_h / gh, img_w / gw);
                let mut data = Vec::with_capacity(gh * gw * cells.len() * 4);
                for y in 0..gh {
                    let sy = (y * stride_h) as f32;
                    for x in 0..gw {
                        let sx = (x * stride_w) as f32;
                        for c in cells {
                            data.extend([sx + c[0], sy + c[1], sx + c[2], sy + c[3]]);
                        }
                    }
                }
                data
            })
            .collect()
    }
}

/// What a set of anchors depends on, besides the generator's settings and the device.
#[derive(Debug, Clone, PartialEq)]
struct AnchorKey {
    image_size: (usize, usize),
    grid_sizes: Vec<(usize, usize)>,
    dtype: DType,
}

/// The last [`CACHED_SETS`] sets of anchors built, least recently used first. Devices are
/// compared with `same_device` (two CUDA devices on one GPU are distinct in candle).
#[derive(Clone, Default)]
struct AnchorCache(Arc<Mutex<Vec<(AnchorKey, Device, Tensor)>>>);

impl AnchorCache {
    fn get(&self, key: &AnchorKey, device: &Device) -> Option<Tensor> {
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let at = sets
            .iter()
            .position(|(k, d, _)| k == key && d.same_device(device))?;
        let hit = sets.remove(at);
        let anchors = hit.2.clone();
        sets.push(hit);
        Some(anchors)
    }

    fn insert(&self, key: AnchorKey, device: &Device, anchors: &Tensor) {
        let mut sets = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Another thread may have built the same set meanwhile.
        if sets
            .iter()
            .any(|(k, d, _)| *k == key && d.same_device(device))
        {
            return;
        }
        if sets.len() >= CACHED_SETS {
            sets.remove(0);
        }
        sets.push((key, device.clone(), anchors.clone()));
    }
}

impl std::fmt::Debug for AnchorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sets = self.0.lock().map_or(0, |s| s.len());
        write!(f, "AnchorCache({sets} sets)")
    }
}

/// Anchors are a function of the settings: generators with equal settings are equal,
/// whatever they have cached.
impl PartialEq for AnchorCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What an [`AnchorGenerator`] (de)serialises as.
#[cfg(feature = "serde")]
#[derive(serde::Serialize, serde::Deserialize)]
struct AnchorSettings {
    sizes: Vec<Vec<f64>>,
    aspect_ratios: Vec<Vec<f64>>,
}

#[cfg(feature = "serde")]
impl TryFrom<AnchorSettings> for AnchorGenerator {
    type Error = Error;

    fn try_from(s: AnchorSettings) -> Result<Self> {
        Self::new(s.sizes, s.aspect_ratios)
    }
}

#[cfg(feature = "serde")]
impl From<AnchorGenerator> for AnchorSettings {
    fn from(g: AnchorGenerator) -> Self {
        AnchorSettings {
            sizes: g.sizes,
            aspect_ratios: g.aspect_ratios,
        }
    }
}

/// The zero-centred anchors of one level, all in f32 as torchvision computes them.
fn cell_anchors(sizes: &[f64], aspect_ratios: &[f64]) -> Vec<[f32; 4]> {
    let mut cells = Vec::with_capacity(sizes.len() * aspect_ratios.len());
    for &ratio in aspect_ratios {
        let h_ratio = (ratio as f32).sqrt();
        let w_ratio = 1.0 / h_ratio;
        for &size in sizes {
            let (ws, hs) = (w_ratio * size as f32, h_ratio * size as f32);
            cells.push([-ws, -hs, ws, hs].map(|v| (v / 2.0).round_ties_even()));
        }
    }
    cells
}

/// `(K, 4)` boxes from their f32 coordinates, in `dtype` on `device` (converted on the host).
fn boxes_tensor(data: Vec<f32>, dtype: DType, device: &Device) -> Result<Tensor> {
    let n = data.len() / 4;
    Ok(host_tensor(data, (n, 4), dtype, device)?)
}
