//! Batching a [`Dataset`]: seeded shuffling, flip / rotation augmentation, stacking.
//!
//! Everything random is derived from the loader's seed, the epoch and the sample's index,
//! never from a running generator, so an epoch's batches are the same whenever (and in
//! whatever order) they are asked for.

use candle_core::Device;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Batch, Dataset, Sample};
use crate::{Error, Result};

/// Which augmentations the loader applies, each with probability 1/2 (a rotation picks one of
/// the four quarter turns uniformly). Image and mask are transformed identically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Augment {
    /// Mirror left–right.
    pub hflip: bool,
    /// Mirror top–bottom.
    pub vflip: bool,
    /// Rotate by a multiple of 90°. A non-square sample is only rotated by 0° or 180°, since a
    /// quarter turn would swap its height and width and it could no longer be batched.
    pub rot90: bool,
}

impl Augment {
    /// No augmentation.
    pub fn none() -> Self {
        Self::default()
    }

    /// Both flips and quarter-turn rotations: the 8 symmetries of the square.
    pub fn flips_and_rotations() -> Self {
        Self {
            hflip: true,
            vflip: true,
            rot90: true,
        }
    }

    /// Applies the augmentation to `sample`, drawing from `rng`. A sample whose vectors do not
    /// fit its sizes is an error.
    pub fn apply(&self, sample: Sample, rng: &mut impl Rng) -> Result<Sample> {
        // Draw every coin whatever the flags, so that switching one transform off does not
        // change what the others do.
        let (h, v, turns) = (
            rng.random_bool(0.5),
            rng.random_bool(0.5),
            rng.random_range(0..4usize),
        );
        let mut s = sample;
        if self.hflip && h {
            s = hflip(&s)?;
        }
        if self.vflip && v {
            s = vflip(&s)?;
        }
        if self.rot90 {
            let turns = if s.height == s.width {
                turns
            } else {
                turns & 2
            };
            if turns != 0 {
                s = rot90(&s, turns)?;
            }
        }
        Ok(s)
    }
}

/// `sample` mirrored left–right. A sample whose vectors do not fit its sizes is an error, as
/// for the other transforms.
pub fn hflip(sample: &Sample) -> Result<Sample> {
    let w = sample.width;
    remap(sample, sample.height, w, |y, x| (y, w - 1 - x))
}

/// `sample` mirrored top–bottom.
pub fn vflip(sample: &Sample) -> Result<Sample> {
    let h = sample.height;
    remap(sample, h, sample.width, |y, x| (h - 1 - y, x))
}

/// `sample` rotated by `k` quarter turns counter-clockwise (as `numpy.rot90`); an odd `k`
/// swaps height and width.
pub fn rot90(sample: &Sample, k: usize) -> Result<Sample> {
    let (h, w) = (sample.height, sample.width);
    match k % 4 {
        0 => remap(sample, h, w, |y, x| (y, x)),
        1 => remap(sample, w, h, |y, x| (x, w - 1 - y)),
        2 => remap(sample, h, w, |y, x| (h - 1 - y, w - 1 - x)),
        _ => remap(sample, w, h, |y, x| (h - 1 - x, y)),
    }
}

/// A new `out_h × out_w` sample whose pixel `(y, x)` is the source pixel `from(y, x)`, in every
/// image channel and in the mask.
fn remap(
    sample: &Sample,
    out_h: usize,
    out_w: usize,
    from: impl Fn(usize, usize) -> (usize, usize),
) -> Result<Sample> {
    let (c, h, w) = (sample.channels, sample.height, sample.width);
    if sample.image.len() != c * h * w || sample.mask.len() != h * w {
        return Err(Error::Shape(format!(
            "a {c}x{h}x{w} sample needs {} image and {} mask values, got {} and {}",
            c * h * w,
            h * w,
            sample.image.len(),
            sample.mask.len()
        )));
    }
    if h * w == 0 {
        return Sample::new(Vec::new(), Vec::new(), c, out_h, out_w);
    }
    let source: Vec<usize> = (0..out_h * out_w)
        .map(|p| {
            let (sy, sx) = from(p / out_w, p % out_w);
            sy * w + sx
        })
        .collect();
    let image = sample
        .image
        .chunks_exact(h * w)
        .flat_map(|plane| source.iter().map(move |&s| plane[s]))
        .collect();
    let mask = source.iter().map(|&s| sample.mask[s]).collect();
    Sample::new(image, mask, c, out_h, out_w)
}

/// Tags that keep the shuffling and augmentation streams of one seed apart.
const SHUFFLE_STREAM: u64 = 1;
const AUGMENT_STREAM: u64 = 2;

/// One step of SplitMix64: a bijection that scatters nearby inputs far apart.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the stream named by `parts` (epoch, sample index, ...) under `seed`.
pub(super) fn derive_seed(seed: u64, parts: &[u64]) -> u64 {
    parts
        .iter()
        .fold(splitmix64(seed), |acc, &p| splitmix64(acc ^ p))
}

/// Cuts a [`Dataset`] into [`Batch`]es, optionally shuffled and augmented.
///
/// ```
/// use candle_core::Device;
/// use unetpp::data::loader::{Augment, DataLoader};
/// use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
///
/// let data = SyntheticDataset::new(
///     SyntheticConfig::builder().samples(10).height(32).width(32).build()?,
/// )?;
/// let loader = DataLoader::new(data, 4)?
///     .shuffle(7)
///     .augment(Augment::flips_and_rotations())
///     .drop_last(true);
/// assert_eq!(loader.num_batches(), 2);
/// for batch in loader.batches(0, &Device::Cpu) {
///     assert_eq!(batch?.images.dims(), &[4, 1, 32, 32]);
/// }
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct DataLoader<D: Dataset> {
    dataset: D,
    batch_size: usize,
    seed: u64,
    shuffle: bool,
    augment: Augment,
    drop_last: bool,
}

impl<D: Dataset> DataLoader<D> {
    /// A loader of `batch_size` samples per batch, in data set order, without augmentation,
    /// keeping the last, smaller batch.
    pub fn new(dataset: D, batch_size: usize) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1, got 0"));
        }
        Ok(Self {
            dataset,
            batch_size,
            seed: 0,
            shuffle: false,
            augment: Augment::none(),
            drop_last: false,
        })
    }

    /// Shuffles the samples anew every epoch: epoch `e` uses a permutation derived from
    /// `(seed, e)`. The seed also drives the augmentation (which otherwise uses seed 0).
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.seed = seed;
        self.shuffle = true;
        self
    }

    /// Augments every sample with a coin derived from `(seed, epoch, sample index)`.
    pub fn augment(mut self, augment: Augment) -> Self {
        self.augment = augment;
        self
    }

    /// Whether to drop the last batch when it holds fewer than `batch_size` samples.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// The data set.
    pub fn dataset(&self) -> &D {
        &self.dataset
    }

    /// Samples per batch (the last batch may hold fewer, see [`Self::drop_last`]).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The order in which epoch `epoch` visits the samples.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.shuffle {
            let seed = derive_seed(self.seed, &[SHUFFLE_STREAM, epoch as u64]);
            order.shuffle(&mut StdRng::seed_from_u64(seed));
        }
        order
    }

    /// Sample `index` of the data set as epoch `epoch` sees it, augmentation applied.
    pub fn sample(&self, epoch: usize, index: usize) -> Result<Sample> {
        let sample = self.dataset.get(index)?;
        if self.augment == Augment::none() {
            return Ok(sample);
        }
        let seed = derive_seed(self.seed, &[AUGMENT_STREAM, epoch as u64, index as u64]);
        self.augment.apply(sample, &mut StdRng::seed_from_u64(seed))
    }

    /// The batches of epoch `epoch`, stacked on `device`. Samples are read when their batch
    /// is reached; a sample that fails to load makes its batch an error.
    pub fn batches(&self, epoch: usize, device: &Device) -> Batches<'_, D> {
        let mut order = self.order(epoch);
        order.truncate(self.num_batches() * self.batch_size);
        Batches {
            loader: self,
            epoch,
            order,
            next: 0,
            device: device.clone(),
        }
    }
}

/// The batches of one epoch, made by [`DataLoader::batches`].
#[derive(Debug)]
pub struct Batches<'a, D: Dataset> {
    loader: &'a DataLoader<D>,
    epoch: usize,
    order: Vec<usize>,
    next: usize,
    device: Device,
}

impl<D: Dataset> Iterator for Batches<'_, D> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let start = self.next;
        if start >= self.order.len() {
            return None;
        }
        let end = (start + self.loader.batch_size).min(self.order.len());
        self.next = end;
        let batch = self.order[start..end]
            .iter()
            .map(|&i| self.loader.sample(self.epoch, i))
            .collect::<Result<Vec<_>>>()
            .and_then(|samples| Batch::from_samples(&samples, &self.device));
        Some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.next).div_ceil(self.loader.batch_size);
        (left, Some(left))
    }
}

impl<D: Dataset> ExactSizeIterator for Batches<'_, D> {}
