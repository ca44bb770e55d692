//! Seeded synthetic segmentation tasks.
//!
//! [`SyntheticDataset`] draws images of objects of widely varying size (the point of UNet++'s
//! nested skip pathways is to segment both small and large objects well), possibly touching
//! or overlapping, blurred and noisy. In a multi-class set an object's class is its shape, and
//! its brightness is random, so shape is the cue to learn. [`circles_and_squares`] is a
//! smaller, fixed binary task that makes a whole batch at once.

use std::ops::RangeInclusive;

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::loader::derive_seed;
use super::{Batch, Dataset, Sample};
use crate::{Error, Result};

/// `n` grey images of `h × w` pixels holding one to three filled circles and squares of
/// widely varying size (radius or half-side from 2 pixels to a quarter of the shorter side),
/// possibly touching or overlapping, with bell-shaped noise of standard deviation 0.35 on a
/// contrast of 0.5, so that single pixels are ambiguous and context decides. The same `seed` gives the same batch.
///
/// ```
/// let b = unetpp::data::synthetic::circles_and_squares(4, 32, 32, 7, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(b.images.dims(), &[4, 1, 32, 32]);
/// ```
pub fn circles_and_squares(
    n: usize,
    h: usize,
    w: usize,
    seed: u64,
    device: &Device,
) -> Result<Batch> {
    if n == 0 || h < 8 || w < 8 {
        return Err(Error::Shape(format!(
            "need at least one image of at least 8x8 pixels, got {n} of {h}x{w}"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut images = vec![0f32; n * h * w];
    let mut masks = vec![0f32; n * h * w];
    let max_r = (h.min(w) / 4).max(3) as f32;
    for b in 0..n {
        let mask = &mut masks[b * h * w..(b + 1) * h * w];
        for _ in 0..rng.random_range(1..=3) {
            let r = rng.random_range(2.0..max_r);
            let cy = rng.random_range(0.0..h as f32);
            let cx = rng.random_range(0.0..w as f32);
            let square = rng.random_bool(0.5);
            for y in 0..h {
                for x in 0..w {
                    let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                    let inside = if square {
                        dy.abs() <= r && dx.abs() <= r
                    } else {
                        dy * dy + dx * dx <= r * r
                    };
                    if inside {
                        mask[y * w + x] = 1.0;
                    }
                }
            }
        }
        let img = &mut images[b * h * w..(b + 1) * h * w];
        for (p, m) in img.iter_mut().zip(mask.iter()) {
            // Sum of three uniforms (standard deviation 0.5), scaled to 0.35.
            let noise: f32 = (0..3).map(|_| rng.random_range(-0.5f32..0.5)).sum::<f32>() * 0.7;
            *p = 0.25 + 0.5 * m + noise;
        }
    }
    let labels: Vec<u32> = masks.iter().map(|&m| m as u32).collect();
    Ok(Batch {
        images: Tensor::from_vec(images, (n, 1, h, w), device)?,
        masks: Tensor::from_vec(masks, (n, 1, h, w), device)?,
        labels: Tensor::from_vec(labels, (n, h, w), device)?,
    })
}

/// The shapes of [`SyntheticDataset`]'s objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A filled ellipse, semi-axes `r` and 0.5 to 1 times `r`.
    Ellipse,
    /// A filled rectangle, half-sides `r` and 0.5 to 1 times `r`.
    Rectangle,
    /// A filled equilateral triangle inscribed in the circle of radius `r`.
    Triangle,
    /// A ring of outer radius `r` and inner radius 0.4 to 0.65 times `r`; what lies under its
    /// hole shows through.
    Ring,
    /// A plus sign of arm half-length `r` and arm half-width 0.3 times `r`.
    Cross,
}

impl Shape {
    /// Every shape, in the order in which classes cycle through them.
    pub const ALL: [Shape; 5] = [
        Shape::Ellipse,
        Shape::Rectangle,
        Shape::Triangle,
        Shape::Ring,
        Shape::Cross,
    ];

    /// The shape that class `class` is drawn as in a multi-class set: classes `1, 2, ...` cycle
    /// through [`Shape::ALL`], so classes 1 and 6 share a shape. `None` for class 0
    /// (background).
    pub fn of_class(class: u32) -> Option<Shape> {
        let i = (class as usize).checked_sub(1)?;
        Some(Self::ALL[i % Self::ALL.len()])
    }

    /// Whether the point `(u, v)`, in the object's own frame, lies inside a shape of radius `r`
    /// whose second parameter (aspect or hole) is `p`.
    fn contains(self, u: f32, v: f32, r: f32, p: f32) -> bool {
        match self {
            Shape::Ellipse => (u / r).powi(2) + (v / (p * r)).powi(2) <= 1.0,
            Shape::Rectangle => u.abs() <= r && v.abs() <= p * r,
            Shape::Triangle => {
                // Outward normals of the three sides; the inradius is half the circumradius.
                const NORMALS: [(f32, f32); 3] =
                    [(0.0, -1.0), (0.866_025_4, 0.5), (-0.866_025_4, 0.5)];
                NORMALS.iter().all(|&(nu, nv)| u * nu + v * nv <= 0.5 * r)
            }
            Shape::Ring => {
                let d2 = u * u + v * v;
                d2 <= r * r && d2 >= (p * r).powi(2)
            }
            Shape::Cross => {
                // At least a pixel wide, so that small crosses do not vanish.
                let t = (0.3 * r).max(0.6);
                (u.abs() <= r && v.abs() <= t) || (v.abs() <= r && u.abs() <= t)
            }
        }
    }
}

/// The recipe of a [`SyntheticDataset`]: [`SyntheticConfig::builder`] (the defaults), chained
/// setters on the returned [`SyntheticConfigBuilder`], then [`SyntheticConfigBuilder::build`].
///
/// Each image has a random background level per channel; each object a random shape (or, in a
/// multi-class set, a random class and its [`Shape::of_class`]), size, position, rotation and
/// brightness. The radius is drawn log-uniformly, so small and large objects are equally
/// common on a log scale. Later objects paint over earlier ones, in the image and in the mask.
/// The image is then blurred and noise is added; before noise its values lie in `[0, 1]`.
///
/// ```
/// use unetpp::data::synthetic::SyntheticConfig;
/// let cfg = SyntheticConfig::builder().samples(8).num_classes(4).seed(7).build()?;
/// assert_eq!((cfg.samples(), cfg.height(), cfg.max_radius()), (8, 64, None));
/// let err = cfg.to_builder().contrast(0.0).build().unwrap_err();
/// assert!(matches!(err, unetpp::Error::Config { field: "contrast", .. }));
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(try_from = "SyntheticConfigBuilder"))]
pub struct SyntheticConfig {
    samples: usize,
    height: usize,
    width: usize,
    channels: usize,
    num_classes: usize,
    objects: RangeInclusive<usize>,
    min_radius: f32,
    max_radius: Option<f32>,
    blur_sigma: f32,
    noise_std: f32,
    contrast: f32,
    seed: u64,
}

/// Chained setters for a [`SyntheticConfig`]; nothing is checked until [`Self::build`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SyntheticConfigBuilder {
    samples: usize,
    height: usize,
    width: usize,
    channels: usize,
    num_classes: usize,
    objects: RangeInclusive<usize>,
    min_radius: f32,
    max_radius: Option<f32>,
    blur_sigma: f32,
    noise_std: f32,
    contrast: f32,
    seed: u64,
}

impl SyntheticConfig {
    /// The defaults (see [`SyntheticConfigBuilder::default`]).
    pub fn builder() -> SyntheticConfigBuilder {
        SyntheticConfigBuilder::default()
    }

    /// A builder holding this configuration, to change it.
    pub fn to_builder(&self) -> SyntheticConfigBuilder {
        SyntheticConfigBuilder {
            samples: self.samples,
            height: self.height,
            width: self.width,
            channels: self.channels,
            num_classes: self.num_classes,
            objects: self.objects.clone(),
            min_radius: self.min_radius,
            max_radius: self.max_radius,
            blur_sigma: self.blur_sigma,
            noise_std: self.noise_std,
            contrast: self.contrast,
            seed: self.seed,
        }
    }

    /// Number of samples.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Image height.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Image channels: 1 or 3.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Classes, background included.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// How many objects an image holds, drawn uniformly.
    pub fn objects(&self) -> RangeInclusive<usize> {
        self.objects.clone()
    }

    /// Smallest object radius in pixels.
    pub fn min_radius(&self) -> f32 {
        self.min_radius
    }

    /// Largest object radius in pixels; `None` is a third of the shorter image side.
    pub fn max_radius(&self) -> Option<f32> {
        self.max_radius
    }

    /// The largest object radius in use: the one set, or a third of the shorter side.
    fn max_radius_or_default(&self) -> f32 {
        self.max_radius
            .unwrap_or(self.height.min(self.width) as f32 / 3.0)
    }

    /// Standard deviation in pixels of the Gaussian blur of the image.
    pub fn blur_sigma(&self) -> f32 {
        self.blur_sigma
    }

    /// Standard deviation of the additive Gaussian noise.
    pub fn noise_std(&self) -> f32 {
        self.noise_std
    }

    /// How much brighter than the background objects are.
    pub fn contrast(&self) -> f32 {
        self.contrast
    }

    /// Seed: sample `i` depends on `(seed, i)` only.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Default for SyntheticConfigBuilder {
    /// 64 binary grey 64×64 images of 2 to 8 objects of radius 2 to 21, blur 0.8, noise 0.1,
    /// contrast 0.5, seed 0.
    fn default() -> Self {
        Self {
            samples: 64,
            height: 64,
            width: 64,
            channels: 1,
            num_classes: 2,
            objects: 2..=8,
            min_radius: 2.0,
            max_radius: None,
            blur_sigma: 0.8,
            noise_std: 0.1,
            contrast: 0.5,
            seed: 0,
        }
    }
}

impl SyntheticConfigBuilder {
    /// Number of samples, at least 1.
    pub fn samples(mut self, samples: usize) -> Self {
        self.samples = samples;
        self
    }

    /// Image height, at least 8.
    pub fn height(mut self, height: usize) -> Self {
        self.height = height;
        self
    }

    /// Image width, at least 8.
    pub fn width(mut self, width: usize) -> Self {
        self.width = width;
        self
    }

    /// Image channels: 1 (grey) or 3 (colour, each object a random colour).
    pub fn channels(mut self, channels: usize) -> Self {
        self.channels = channels;
        self
    }

    /// Classes, background included: 2 is binary (every object is class 1); `k > 2` makes
    /// each object's class (1 to `k - 1`) decide its shape.
    pub fn num_classes(mut self, num_classes: usize) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// How many objects an image holds, drawn uniformly: `a..=b` with `a <= b` and `b >= 1`.
    pub fn objects(mut self, objects: RangeInclusive<usize>) -> Self {
        self.objects = objects;
        self
    }

    /// Smallest object radius in pixels, at least 0.5.
    pub fn min_radius(mut self, min_radius: f32) -> Self {
        self.min_radius = min_radius;
        self
    }

    /// Largest object radius in pixels, at least `min_radius`; `None` (the default) is a third
    /// of the shorter image side.
    pub fn max_radius(mut self, max_radius: impl Into<Option<f32>>) -> Self {
        self.max_radius = max_radius.into();
        self
    }

    /// Standard deviation in pixels of the Gaussian blur of the image (not the mask); 0 is
    /// none.
    pub fn blur_sigma(mut self, blur_sigma: f32) -> Self {
        self.blur_sigma = blur_sigma;
        self
    }

    /// Standard deviation of the additive Gaussian noise, finite and non-negative.
    pub fn noise_std(mut self, noise_std: f32) -> Self {
        self.noise_std = noise_std;
        self
    }

    /// How much brighter than the background objects are, in `(0, 1]`: each object is
    /// brighter by 0.6 to 1 times this.
    pub fn contrast(mut self, contrast: f32) -> Self {
        self.contrast = contrast;
        self
    }

    /// Seed: sample `i` depends on `(seed, i)` only.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The configuration, or an [`Error::Config`] naming the first invalid field.
    pub fn build(self) -> Result<SyntheticConfig> {
        let at_least = |field, v: usize, min: usize| {
            if v < min {
                Err(Error::config(
                    field,
                    format!("must be at least {min}, got {v}"),
                ))
            } else {
                Ok(())
            }
        };
        at_least("samples", self.samples, 1)?;
        at_least("height", self.height, 8)?;
        at_least("width", self.width, 8)?;
        at_least("num_classes", self.num_classes, 2)?;
        if self.channels != 1 && self.channels != 3 {
            return Err(Error::config(
                "channels",
                format!("must be 1 or 3, got {}", self.channels),
            ));
        }
        if self.objects.is_empty() || *self.objects.end() == 0 {
            return Err(Error::config(
                "objects",
                format!(
                    "must be a range `a..=b` with a <= b and b >= 1, got {:?}",
                    self.objects
                ),
            ));
        }
        if !(self.min_radius.is_finite() && self.min_radius >= 0.5) {
            return Err(Error::config(
                "min_radius",
                format!("must be at least 0.5 pixel, got {}", self.min_radius),
            ));
        }
        let cfg = SyntheticConfig {
            samples: self.samples,
            height: self.height,
            width: self.width,
            channels: self.channels,
            num_classes: self.num_classes,
            objects: self.objects,
            min_radius: self.min_radius,
            max_radius: self.max_radius,
            blur_sigma: self.blur_sigma,
            noise_std: self.noise_std,
            contrast: self.contrast,
            seed: self.seed,
        };
        let max_radius = cfg.max_radius_or_default();
        if !(max_radius.is_finite() && max_radius >= cfg.min_radius) {
            return Err(Error::config(
                "max_radius",
                format!(
                    "must be finite and at least min_radius {}, got {max_radius}{}",
                    cfg.min_radius,
                    if cfg.max_radius.is_none() {
                        " (a third of the shorter side)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let non_negative = |field, v: f32| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::config(
                    field,
                    format!("must be finite and non-negative, got {v}"),
                ))
            }
        };
        non_negative("blur_sigma", cfg.blur_sigma)?;
        non_negative("noise_std", cfg.noise_std)?;
        if !(cfg.contrast > 0.0 && cfg.contrast <= 1.0) {
            return Err(Error::config(
                "contrast",
                format!("must lie in (0, 1], got {}", cfg.contrast),
            ));
        }
        Ok(cfg)
    }
}

built_by!(SyntheticConfig, SyntheticConfigBuilder);

/// A seeded synthetic segmentation data set (see [`SyntheticConfig`]). Sample `i` is a pure
/// function of `(seed, i)`: samples can be fetched in any order, any number of times.
///
/// ```
/// use unetpp::data::Dataset;
/// use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
///
/// let data = SyntheticDataset::new(
///     SyntheticConfig::builder()
///         .samples(8)
///         .num_classes(4) // ellipses, rectangles and triangles on background
///         .seed(7)
///         .build()?,
/// )?;
/// let s = data.get(5)?;
/// assert_eq!((s.channels, s.height, s.width), (1, 64, 64));
/// assert!(s.mask.iter().all(|&class| class < 4));
/// assert_eq!(s, data.get(5)?);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SyntheticDataset {
    cfg: SyntheticConfig,
    max_radius: f32,
}

/// One object to paint.
struct Object {
    shape: Shape,
    label: u32,
    cy: f32,
    cx: f32,
    r: f32,
    /// Aspect ratio or hole size, see [`Shape::contains`].
    p: f32,
    cos: f32,
    sin: f32,
    brightness: [f32; 3],
}

impl SyntheticDataset {
    /// The data set of `cfg`; [`SyntheticConfigBuilder::build`] has checked it, and this
    /// checks it again.
    pub fn new(cfg: SyntheticConfig) -> Result<Self> {
        let cfg = cfg.to_builder().build()?;
        let max_radius = cfg.max_radius_or_default();
        Ok(Self { cfg, max_radius })
    }

    /// The recipe.
    pub fn config(&self) -> &SyntheticConfig {
        &self.cfg
    }

    fn draw_object(&self, rng: &mut StdRng) -> Object {
        let cfg = &self.cfg;
        let (shape, label) = if cfg.num_classes == 2 {
            (Shape::ALL[rng.random_range(0..Shape::ALL.len())], 1)
        } else {
            let class = rng.random_range(1..cfg.num_classes as u32);
            (Shape::of_class(class).unwrap_or(Shape::Ellipse), class)
        };
        let (lo, hi) = (cfg.min_radius.ln(), self.max_radius.ln());
        let r = if hi > lo {
            rng.random_range(lo..hi).exp()
        } else {
            cfg.min_radius
        };
        let p = match shape {
            Shape::Ring => rng.random_range(0.4..0.65),
            _ => rng.random_range(0.5..1.0),
        };
        let angle = rng.random_range(0.0..std::f32::consts::TAU);
        let mut brightness = [0f32; 3];
        for b in &mut brightness {
            *b = cfg.contrast * rng.random_range(0.6..1.0);
        }
        Object {
            shape,
            label,
            cy: rng.random_range(0.0..cfg.height as f32),
            cx: rng.random_range(0.0..cfg.width as f32),
            r,
            p,
            cos: angle.cos(),
            sin: angle.sin(),
            brightness,
        }
    }
}

impl Dataset for SyntheticDataset {
    fn len(&self) -> usize {
        self.cfg.samples
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let cfg = &self.cfg;
        if index >= cfg.samples {
            return Err(Error::Input(format!(
                "sample {index} asked of a synthetic data set of {}",
                cfg.samples
            )));
        }
        let (c, h, w) = (cfg.channels, cfg.height, cfg.width);
        let mut rng = StdRng::seed_from_u64(derive_seed(cfg.seed, &[index as u64]));
        let mut image = vec![0f32; c * h * w];
        let mut mask = vec![0u32; h * w];
        let mut background = [0f32; 3];
        for (plane, bg) in image.chunks_exact_mut(h * w).zip(&mut background) {
            *bg = rng.random_range(0.0..=1.0 - cfg.contrast);
            plane.fill(*bg);
        }
        for _ in 0..rng.random_range(cfg.objects.clone()) {
            let o = self.draw_object(&mut rng);
            let reach = o.r + 1.0;
            let rows = span(o.cy - reach, o.cy + reach, h);
            let cols = span(o.cx - reach, o.cx + reach, w);
            for y in rows {
                for x in cols.clone() {
                    let (dy, dx) = (y as f32 + 0.5 - o.cy, x as f32 + 0.5 - o.cx);
                    let (u, v) = (o.cos * dx + o.sin * dy, o.cos * dy - o.sin * dx);
                    if o.shape.contains(u, v, o.r, o.p) {
                        mask[y * w + x] = o.label;
                        for ch in 0..c {
                            image[ch * h * w + y * w + x] = background[ch] + o.brightness[ch];
                        }
                    }
                }
            }
        }
        for plane in image.chunks_exact_mut(h * w) {
            gaussian_blur(plane, h, w, cfg.blur_sigma);
        }
        if cfg.noise_std > 0.0 {
            for p in &mut image {
                *p += cfg.noise_std * standard_normal(&mut rng);
            }
        }
        Sample::new(image, mask, c, h, w)
    }

    fn channels(&self) -> usize {
        self.cfg.channels
    }

    fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }
}

/// The pixel indices whose centres may lie in `[lo, hi]`, clipped to `0..n`.
fn span(lo: f32, hi: f32, n: usize) -> std::ops::Range<usize> {
    let clip = |v: f32| (v.max(0.0) as usize).min(n);
    clip(lo.floor())..clip(hi.ceil() + 1.0)
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut impl Rng) -> f32 {
    // 1 - [0, 1) is (0, 1], whose logarithm is finite.
    let u1 = 1.0 - rng.random::<f32>();
    let u2 = rng.random::<f32>();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// Separable Gaussian blur of an `h × w` plane in place, edges extended.
fn gaussian_blur(plane: &mut [f32], h: usize, w: usize, sigma: f32) {
    if sigma <= 0.0 {
        return;
    }
    let radius = (3.0 * sigma).ceil() as isize;
    let mut kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-((d * d) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let taps = || kernel.iter().zip(-radius..=radius);
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            rows[y * w + x] = taps()
                .map(|(k, d)| k * plane[y * w + clamp(x as isize + d, w)])
                .sum();
        }
    }
    for y in 0..h {
        for x in 0..w {
            plane[y * w + x] = taps()
                .map(|(k, d)| k * rows[clamp(y as isize + d, h) * w + x])
                .sum();
        }
    }
}
