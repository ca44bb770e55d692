//! Seeded synthetic instance segmentation: touching blobs of widely varying size, like cell
//! nuclei in a microscope image, each with its own mask, box and label.
//!
//! Blobs are ellipses with wobbly outlines (two low harmonics of the radius), randomly
//! oriented, placed so that many touch or overlap; a later blob covers an earlier one, so
//! the instance masks never overlap and an instance is the part of its blob still visible.
//! Instances left with fewer than `min_area` pixels are dropped. Boxes are the masks' pixel
//! extents in `x1, y1, x2, y2` with `x2 = last column + 1` (pixel edges). With two classes, a
//! blob's class is its shape: round (1) or elongated (2).

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// One object of an [`InstanceSample`].
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Class, from 1 (0 is the background in detection).
    pub label: u32,
    /// The object's pixels, `(H, W)`, 0 or 1.
    pub mask: Vec<u8>,
    /// `x1, y1, x2, y2` in pixel edges.
    pub bbox: [f32; 4],
}

/// An RGB image and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSample {
    /// Pixels `(3, H, W)` in `[0, 1]`.
    pub image: Vec<f32>,
    /// The objects (possibly none).
    pub instances: Vec<Instance>,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
}

impl InstanceSample {
    /// The image as a `(3, H, W)` tensor.
    pub fn image_tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(
            self.image.clone(),
            (3, self.height, self.width),
            device,
        )?)
    }

    /// The boxes as a `(K, 4)` f32 tensor.
    pub fn boxes_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self.instances.iter().flat_map(|i| i.bbox).collect();
        Ok(Tensor::from_vec(v, (self.instances.len(), 4), device)?)
    }

    /// The labels as a `(K,)` u32 tensor.
    pub fn labels_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<u32> = self.instances.iter().map(|i| i.label).collect();
        Ok(Tensor::from_vec(v, self.instances.len(), device)?)
    }

    /// The masks as a `(K, H, W)` f32 tensor of 0 and 1.
    pub fn masks_tensor(&self, device: &Device) -> Result<Tensor> {
        let v: Vec<f32> = self
            .instances
            .iter()
            .flat_map(|i| i.mask.iter().map(|&m| f32::from(m)))
            .collect();
        Ok(
            Tensor::from_vec(v, (self.instances.len(), self.height, self.width), device)?
                .to_dtype(DType::F32)?,
        )
    }
}

/// Settings of [`SyntheticNuclei`]: [`NucleiConfig::builder`] (the defaults), chained setters
/// on the returned [`NucleiConfigBuilder`], then [`NucleiConfigBuilder::build`].
///
/// ```
/// use unetpp::data::instances::NucleiConfig;
/// let cfg = NucleiConfig::builder().samples(4).seed(1).size(64, 80).classes(2).build()?;
/// assert_eq!((cfg.size(), cfg.objects(), cfg.classes()), ((64, 80), (2, 12), 2));
/// let err = cfg.to_builder().radius(5.0, 2.0).build().unwrap_err();
/// assert!(matches!(err, unetpp::Error::Config { field: "radius", .. }));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "NucleiConfigBuilder"))]
pub struct NucleiConfig {
    size: (usize, usize),
    samples: usize,
    objects: (usize, usize),
    radius: (f32, f32),
    classes: u32,
    min_area: usize,
    noise: f32,
    seed: u64,
}

/// Chained setters for a [`NucleiConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct NucleiConfigBuilder {
    size: (usize, usize),
    samples: usize,
    objects: (usize, usize),
    radius: (f32, f32),
    classes: u32,
    min_area: usize,
    noise: f32,
    seed: u64,
}

impl NucleiConfig {
    /// The defaults (see [`NucleiConfigBuilder::default`]).
    pub fn builder() -> NucleiConfigBuilder {
        NucleiConfigBuilder::default()
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> NucleiConfigBuilder {
        NucleiConfigBuilder {
            size: self.size,
            samples: self.samples,
            objects: self.objects,
            radius: self.radius,
            classes: self.classes,
            min_area: self.min_area,
            noise: self.noise,
            seed: self.seed,
        }
    }

    /// Image height and width.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Blobs drawn per image, at least and at most (before hidden ones are dropped).
    pub fn objects(&self) -> (usize, usize) {
        self.objects
    }

    /// Mean radius of a blob in pixels, at least and at most (drawn log-uniformly).
    pub fn radius(&self) -> (f32, f32) {
        self.radius
    }

    /// 1: every blob is class 1; 2: round blobs are class 1, elongated ones class 2.
    pub fn classes(&self) -> u32 {
        self.classes
    }

    /// Instances with fewer visible pixels are dropped.
    pub fn min_area(&self) -> usize {
        self.min_area
    }

    /// Standard deviation of the pixel noise.
    pub fn noise(&self) -> f32 {
        self.noise
    }

    /// Seed of the whole set (sample `i` depends only on the seed and `i`).
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Default for NucleiConfigBuilder {
    /// 64 samples of 96×96 images with 2–12 blobs of radius 3–16 pixels, one class, instances
    /// of at least 8 pixels, noise 0.05, seed 0.
    fn default() -> Self {
        Self {
            size: (96, 96),
            samples: 64,
            objects: (2, 12),
            radius: (3.0, 16.0),
            classes: 1,
            min_area: 8,
            noise: 0.05,
            seed: 0,
        }
    }
}

impl NucleiConfigBuilder {
    /// Image height and width, each at least 16.
    pub fn size(mut self, height: usize, width: usize) -> Self {
        self.size = (height, width);
        self
    }

    /// Number of samples (0 is an empty set).
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples;
        self
    }

    /// Blobs drawn per image, at least `min` and at most `max` (before hidden ones are
    /// dropped).
    pub fn objects(mut self, min: usize, max: usize) -> Self {
        self.objects = (min, max);
        self
    }

    /// Mean radius of a blob in pixels, `1 <= min <= max` (drawn log-uniformly).
    pub fn radius(mut self, min: f32, max: f32) -> Self {
        self.radius = (min, max);
        self
    }

    /// 1: every blob is class 1; 2: round blobs are class 1, elongated ones class 2.
    pub fn classes(mut self, classes: u32) -> Self {
        self.classes = classes;
        self
    }

    /// Instances with fewer visible pixels are dropped (0 and 1 both keep every visible one).
    pub fn min_area(mut self, min_area: usize) -> Self {
        self.min_area = min_area;
        self
    }

    /// Standard deviation of the pixel noise, finite and non-negative.
    pub fn noise(mut self, noise: f32) -> Self {
        self.noise = noise;
        self
    }

    /// Seed of the whole set (sample `i` depends only on the seed and `i`).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<NucleiConfig> {
        let (h, w) = self.size;
        if h < 16 || w < 16 {
            return Err(Error::config(
                "size",
                format!("at least 16x16, got {h}x{w}"),
            ));
        }
        if self.objects.0 > self.objects.1 {
            return Err(Error::config(
                "objects",
                format!("{:?} is empty", self.objects),
            ));
        }
        let (r0, r1) = self.radius;
        if !(r0 >= 1.0 && r1 >= r0 && r1.is_finite()) {
            return Err(Error::config(
                "radius",
                format!("need 1 <= min <= max, got {r0}..{r1}"),
            ));
        }
        if !(1..=2).contains(&self.classes) {
            return Err(Error::config(
                "classes",
                format!("1 or 2, got {}", self.classes),
            ));
        }
        if !(self.noise >= 0.0 && self.noise.is_finite()) {
            return Err(Error::config(
                "noise",
                format!("must be >= 0, got {}", self.noise),
            ));
        }
        Ok(NucleiConfig {
            size: self.size,
            samples: self.samples,
            objects: self.objects,
            radius: self.radius,
            classes: self.classes,
            min_area: self.min_area,
            noise: self.noise,
            seed: self.seed,
        })
    }
}

built_by!(NucleiConfig, NucleiConfigBuilder);

/// A seeded set of synthetic nuclei images ([`NucleiConfig`]).
///
/// ```
/// use unetpp::data::instances::{NucleiConfig, SyntheticNuclei};
/// let set = SyntheticNuclei::new(NucleiConfig::builder().samples(4).seed(1).build()?)?;
/// let s = set.get(0)?;
/// assert_eq!(s.image.len(), 3 * 96 * 96);
/// for inst in &s.instances {
///     assert!(inst.bbox[2] > inst.bbox[0] && inst.bbox[3] > inst.bbox[1]);
/// }
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SyntheticNuclei {
    cfg: NucleiConfig,
}

impl SyntheticNuclei {
    /// The set of `cfg`; [`NucleiConfigBuilder::build`] has checked it, and this checks it
    /// again.
    pub fn new(cfg: NucleiConfig) -> Result<Self> {
        let cfg = cfg.to_builder().build()?;
        Ok(SyntheticNuclei { cfg })
    }

    /// The settings.
    pub fn config(&self) -> &NucleiConfig {
        &self.cfg
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.cfg.samples
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.cfg.samples == 0
    }

    /// Sample `i`.
    pub fn get(&self, i: usize) -> Result<InstanceSample> {
        if i >= self.cfg.samples {
            return Err(Error::Input(format!(
                "sample {i} of a set of {}",
                self.cfg.samples
            )));
        }
        let cfg = &self.cfg;
        let (h, w) = cfg.size;
        let mut rng =
            StdRng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        // Which blob owns each pixel (0: background), and each blob's class and colour.
        let mut owner = vec![0usize; h * w];
        let mut blobs: Vec<(u32, [f32; 3])> = Vec::new();
        let count = rng.random_range(cfg.objects.0..=cfg.objects.1);
        let (lr0, lr1) = (cfg.radius.0.ln(), cfg.radius.1.ln());
        for _ in 0..count {
            let r = if lr1 > lr0 {
                rng.random_range(lr0..lr1).exp()
            } else {
                cfg.radius.0
            };
            let elongated = cfg.classes == 2 && rng.random_bool(0.5);
            let (ry, rx) = if elongated {
                (r * 0.55, r * 1.6)
            } else {
                (r, r * rng.random_range(0.85..1.15))
            };
            let angle: f32 = rng.random_range(0.0..std::f32::consts::PI);
            let (a2, p2, a3, p3) = (
                rng.random_range(0.0..0.12f32),
                rng.random_range(0.0..6.3f32),
                rng.random_range(0.0..0.08f32),
                rng.random_range(0.0..6.3f32),
            );
            let cy = rng.random_range(0.0..h as f32);
            let cx = rng.random_range(0.0..w as f32);
            let shade = rng.random_range(0.55..0.95f32);
            let colour = [0.55 * shade, 0.25 * shade, 0.75 * shade];
            blobs.push((if elongated { 2 } else { 1 }, colour));
            let id = blobs.len();
            let reach = rx.max(ry) * 1.25 + 1.0;
            let y_lo = (cy - reach).floor().max(0.0) as usize;
            let y_hi = ((cy + reach).ceil() as usize).min(h);
            let x_lo = (cx - reach).floor().max(0.0) as usize;
            let x_hi = ((cx + reach).ceil() as usize).min(w);
            let (s, c) = angle.sin_cos();
            for y in y_lo..y_hi {
                for x in x_lo..x_hi {
                    let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                    let (u, v) = (c * dx + s * dy, -s * dx + c * dy);
                    let theta = v.atan2(u);
                    let wobble =
                        1.0 + a2 * (2.0 * theta + p2).sin() + a3 * (3.0 * theta + p3).sin();
                    if (u / rx).powi(2) + (v / ry).powi(2) <= wobble * wobble {
                        owner[y * w + x] = id;
                    }
                }
            }
        }
        let mut image = vec![0f32; 3 * h * w];
        let background = [0.92f32, 0.85, 0.9];
        for p in 0..h * w {
            let colour = match owner[p] {
                0 => background,
                id => blobs[id - 1].1,
            };
            for ch in 0..3 {
                let noise: f32 =
                    (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 2.0;
                image[ch * h * w + p] = (colour[ch] + cfg.noise * noise).clamp(0.0, 1.0);
            }
        }
        let mut instances = Vec::new();
        for (k, &(label, _)) in blobs.iter().enumerate() {
            let id = k + 1;
            let mask: Vec<u8> = owner.iter().map(|&o| u8::from(o == id)).collect();
            let area = mask.iter().filter(|&&m| m == 1).count();
            if area < cfg.min_area.max(1) {
                continue;
            }
            let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0, 0);
            for (p, _) in mask.iter().enumerate().filter(|(_, &m)| m == 1) {
                let (y, x) = (p / w, p % w);
                x1 = x1.min(x);
                y1 = y1.min(y);
                x2 = x2.max(x + 1);
                y2 = y2.max(y + 1);
            }
            instances.push(Instance {
                label,
                mask,
                bbox: [x1 as f32, y1 as f32, x2 as f32, y2 as f32],
            });
        }
        Ok(InstanceSample {
            image,
            instances,
            height: h,
            width: w,
        })
    }
}
