//! Sampling a fixed-size, balanced set of positives and negatives per image for the losses,
//! as torchvision's `BalancedPositiveNegativeSampler` does.
//!
//! Most anchors and proposals are background. Faster R-CNN (Ren et al. 2015, §3.1.3) trains
//! the RPN on 256 anchors per image, up to half of them positive, and the box head on 512
//! proposals, up to a quarter positive (the Mask R-CNN defaults,
//! [`BalancedPositiveNegativeSampler::rpn`] and [`BalancedPositiveNegativeSampler::roi_heads`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use rand::{rngs::StdRng, SeedableRng};
//! use unetpp::maskrcnn::BalancedPositiveNegativeSampler;
//!
//! // Labels after matching: ≥ 1 positive, 0 negative, negative values ignored.
//! let labels = Tensor::new(&[1i64, 0, 0, -1, 2, 0, 0, 0, -2, 1], &Device::Cpu)?;
//! let sampler = BalancedPositiveNegativeSampler::new(4, 0.25)?;
//! let (pos, neg) = sampler.sample(&[labels], &mut StdRng::seed_from_u64(0))?;
//! assert_eq!(pos[0].sum_all()?.to_dtype(candle_core::DType::U32)?.to_scalar::<u32>()?, 1);
//! assert_eq!(neg[0].sum_all()?.to_dtype(candle_core::DType::U32)?.to_scalar::<u32>()?, 3);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::Tensor;
use rand::Rng;

use crate::ops::host_f64;
use crate::{Error, Result};

/// Picks, per image, at most `batch_size_per_image` elements, of which at most
/// `⌊batch_size_per_image · positive_fraction⌋` positives, the rest negatives:
/// torchvision's `torchvision.models.detection._utils.BalancedPositiveNegativeSampler`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BalancedPositiveNegativeSampler {
    batch_size_per_image: usize,
    positive_fraction: f64,
}

impl BalancedPositiveNegativeSampler {
    /// A sampler of `batch_size_per_image` elements per image, a fraction
    /// `positive_fraction` of them positive when there are enough positives.
    ///
    /// Fails if `batch_size_per_image` is 0 or `positive_fraction` is outside `[0, 1]`.
    pub fn new(batch_size_per_image: usize, positive_fraction: f64) -> Result<Self> {
        if batch_size_per_image == 0 {
            return Err(Error::config("batch_size_per_image", "must be positive"));
        }
        if !(0.0..=1.0).contains(&positive_fraction) {
            return Err(Error::config(
                "positive_fraction",
                format!("must be in [0, 1], got {positive_fraction}"),
            ));
        }
        Ok(BalancedPositiveNegativeSampler {
            batch_size_per_image,
            positive_fraction,
        })
    }

    /// The region proposal network's sampler: 256 anchors per image, half positive.
    pub fn rpn() -> Self {
        BalancedPositiveNegativeSampler {
            batch_size_per_image: 256,
            positive_fraction: 0.5,
        }
    }

    /// The box head's sampler (`RoIHeads`): 512 proposals per image, a quarter positive.
    pub fn roi_heads() -> Self {
        BalancedPositiveNegativeSampler {
            batch_size_per_image: 512,
            positive_fraction: 0.25,
        }
    }

    /// The number of elements sampled per image, when there are enough.
    pub fn batch_size_per_image(&self) -> usize {
        self.batch_size_per_image
    }

    /// The largest fraction of positives in a sample.
    pub fn positive_fraction(&self) -> f64 {
        self.positive_fraction
    }

    /// Samples each image's labels, a 1-D tensor of any dtype in which values `≥ 1` are
    /// positives, `0` negatives and anything else (`-1`, `-2`, NaN) ignored.
    ///
    /// Returns, per image, a `u8` mask of the sampled positives and one of the sampled
    /// negatives, each as long as the labels and on their device. With `P` positives and
    /// `N` negatives it takes `p = min(P, ⌊batch · fraction⌋)` positives and
    /// `min(N, batch − p)` negatives, each set uniformly at random without replacement.
    ///
    /// The draws come from `rng`: the same seed gives the same masks. torchvision draws
    /// with `torch.randperm`, whose stream this cannot reproduce; the counts and the
    /// distribution are the same.
    ///
    /// Fails if a label tensor is not 1-D.
    pub fn sample<R: Rng + ?Sized>(
        &self,
        matched_labels: &[Tensor],
        rng: &mut R,
    ) -> Result<(Vec<Tensor>, Vec<Tensor>)> {
        let mut positives = Vec::with_capacity(matched_labels.len());
        let mut negatives = Vec::with_capacity(matched_labels.len());
        for (image, labels) in matched_labels.iter().enumerate() {
            let len = labels.dims1().map_err(|_| {
                Error::Shape(format!(
                    "BalancedPositiveNegativeSampler expects 1-D labels, image {image} has \
                     shape {:?}",
                    labels.dims()
                ))
            })?;
            // f64 holds every label exactly enough: no integer maps to 0 or crosses 1. The
            // labels are copied off the device before they are widened.
            let values = host_f64(labels)?.to_vec1::<f64>()?;
            let pos: Vec<usize> = (0..len).filter(|&i| values[i] >= 1.0).collect();
            let neg: Vec<usize> = (0..len).filter(|&i| values[i] == 0.0).collect();
            let (pos, neg) = self.draw(&pos, &neg, rng);
            let device = labels.device();
            positives.push(Tensor::from_vec(mask(&pos, len), len, device)?);
            negatives.push(Tensor::from_vec(mask(&neg, len), len, device)?);
        }
        Ok((positives, negatives))
    }

    /// The draw of one image from its candidate positives and negatives (positions in its
    /// labels): the sampled positives and negatives, each ascending. [`Self::sample`] is
    /// this per image; callers that hold their labels on the host already use it directly.
    pub(crate) fn draw<R: Rng + ?Sized>(
        &self,
        positives: &[usize],
        negatives: &[usize],
        rng: &mut R,
    ) -> (Vec<usize>, Vec<usize>) {
        let max_pos = (self.batch_size_per_image as f64 * self.positive_fraction) as usize;
        let num_pos = positives.len().min(max_pos);
        let num_neg = negatives.len().min(self.batch_size_per_image - num_pos);
        let pos = choose(positives, num_pos, rng);
        let neg = choose(negatives, num_neg, rng);
        (pos, neg)
    }
}

/// `amount` of `candidates`, chosen uniformly at random, in ascending order of position.
fn choose<R: Rng + ?Sized>(candidates: &[usize], amount: usize, rng: &mut R) -> Vec<usize> {
    let mut chosen: Vec<usize> = rand::seq::index::sample(rng, candidates.len(), amount)
        .into_iter()
        .map(|i| candidates[i])
        .collect();
    chosen.sort_unstable();
    chosen
}

/// A `u8` mask of length `len` with `positions` set.
fn mask(positions: &[usize], len: usize) -> Vec<u8> {
    let mut mask = vec![0u8; len];
    for &i in positions {
        mask[i] = 1;
    }
    mask
}
