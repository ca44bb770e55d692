//! Test-time augmentation: the network run on flipped (and optionally rotated) copies of its
//! input, each output turned back, and the results averaged.
//!
//! Average probabilities, not logits: the predictor given to [`Tta::run`] should return
//! probabilities (as [`Mode::probabilities`](crate::model::Mode::probabilities) does), as
//! nnU-Net and MONAI's flip-based inference do.

use candle_core::Tensor;

use crate::{Error, Result};

/// One symmetry of the input grid: the last two spatial axes swapped (or not), then some
/// spatial axes reversed. Its own inverse, applied in the opposite order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transform {
    /// Swap the last two spatial axes first (a transpose; with a flip, a 90° rotation).
    pub transpose: bool,
    /// Bit `a` set: reverse spatial axis `a` (0 is the first spatial axis, `H` of an
    /// image, `D` of a volume).
    pub flips: u32,
}

impl Transform {
    /// The identity.
    pub const IDENTITY: Transform = Transform {
        transpose: false,
        flips: 0,
    };

    /// Applies the transform to `x`, `(N, C, spatial…)`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let rank = x.rank();
        let y = if self.transpose {
            x.transpose(rank - 2, rank - 1)?
        } else {
            x.clone()
        };
        // Contiguous for `flip` (an index selection) and for the predictor.
        let y = y.contiguous()?;
        let dims = flip_dims(self.flips, rank);
        Ok(if dims.is_empty() { y } else { y.flip(&dims)? })
    }

    /// Undoes the transform on an output `(N, K, spatial…)` of a transformed input.
    pub fn invert(&self, y: &Tensor) -> Result<Tensor> {
        let rank = y.rank();
        let dims = flip_dims(self.flips, rank);
        let mut x = if dims.is_empty() {
            y.clone()
        } else {
            y.contiguous()?.flip(&dims)?
        };
        if self.transpose {
            x = x.transpose(rank - 2, rank - 1)?;
        }
        Ok(x.contiguous()?)
    }
}

fn flip_dims(flips: u32, rank: usize) -> Vec<usize> {
    (0..rank.saturating_sub(2))
        .filter(|a| flips >> a & 1 == 1)
        .map(|a| a + 2)
        .collect()
}

/// A set of input symmetries to average over.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use unetpp::inference::Tta;
///
/// let x = Tensor::randn(0f32, 1., (1, 1, 8, 8), &Device::Cpu)?;
/// // An equivariant predictor (a pointwise map) gives back its plain output.
/// let tta = Tta::flips_and_rotations(2)?;
/// assert_eq!(tta.transforms().len(), 8);
/// let y = tta.run(&x, |x| Ok(candle_nn::ops::sigmoid(x)?))?;
/// let plain = candle_nn::ops::sigmoid(&x)?;
/// let diff = (y - plain)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
/// assert!(diff < 1e-6);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tta {
    rank: usize,
    transforms: Vec<Transform>,
}

impl Tta {
    /// Every combination of flips of the `rank` spatial axes (`2^rank` passes, the identity
    /// first): nnU-Net's mirroring.
    pub fn flips(rank: usize) -> Result<Self> {
        Self::check_rank(rank, 1)?;
        Ok(Self {
            rank,
            transforms: (0..1u32 << rank)
                .map(|flips| Transform {
                    transpose: false,
                    flips,
                })
                .collect(),
        })
    }

    /// [`Self::flips`] with and without the last two axes swapped: for images, the eight
    /// symmetries of the square (flips and 90° rotations); for volumes, the rotations by 90°
    /// in the plane of the last two axes, each with every flip (`2^(rank+1)` passes). The
    /// network then also sees inputs with those two axes swapped, so a non-square window
    /// must suit it both ways.
    pub fn flips_and_rotations(rank: usize) -> Result<Self> {
        Self::check_rank(rank, 2)?;
        let mut tta = Self::flips(rank)?;
        let turned: Vec<Transform> = tta
            .transforms
            .iter()
            .map(|t| Transform {
                transpose: true,
                ..*t
            })
            .collect();
        tta.transforms.extend(turned);
        Ok(tta)
    }

    /// Chosen transforms, for `rank` spatial axes (a transpose needs two); an empty set is
    /// an error.
    pub fn from_transforms(rank: usize, transforms: Vec<Transform>) -> Result<Self> {
        Self::check_rank(rank, 1)?;
        if transforms.is_empty() {
            return Err(Error::config("transforms", "needs at least one transform"));
        }
        for t in &transforms {
            if t.transpose && rank < 2 {
                return Err(Error::config(
                    "transforms",
                    "a transpose needs two spatial axes",
                ));
            }
            if t.flips >> rank != 0 {
                return Err(Error::config(
                    "transforms",
                    format!("flip mask {:#b} names an axis beyond {rank}", t.flips),
                ));
            }
        }
        Ok(Self { rank, transforms })
    }

    /// The transforms, in the order they run.
    pub fn transforms(&self) -> &[Transform] {
        &self.transforms
    }

    /// The number of spatial axes this set is for.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Runs `predictor` on every transformed copy of `x` (`(N, C, spatial…)`), undoes each
    /// transform on its output and returns their mean, summed in the order of
    /// [`Self::transforms`].
    pub fn run<F>(&self, x: &Tensor, mut predictor: F) -> Result<Tensor>
    where
        F: FnMut(&Tensor) -> Result<Tensor>,
    {
        if x.rank() != self.rank + 2 {
            return Err(Error::Shape(format!(
                "test-time augmentation over {} spatial axes needs a rank-{} input, got {:?}",
                self.rank,
                self.rank + 2,
                x.dims()
            )));
        }
        let mut sum: Option<Tensor> = None;
        for t in &self.transforms {
            let y = t.invert(&predictor(&t.apply(x)?)?)?;
            sum = Some(match sum {
                None => y,
                Some(s) => {
                    if s.dims() != y.dims() {
                        return Err(Error::Shape(format!(
                            "predictor outputs {:?} and {:?} under different transforms",
                            s.dims(),
                            y.dims()
                        )));
                    }
                    (s + y)?
                }
            });
        }
        let sum = sum.ok_or_else(|| Error::config("transforms", "empty"))?;
        Ok((sum / self.transforms.len() as f64)?)
    }

    fn check_rank(rank: usize, least: usize) -> Result<()> {
        if rank < least || rank > 8 {
            return Err(Error::config(
                "rank",
                format!("needs {least} to 8 spatial axes, got {rank}"),
            ));
        }
        Ok(())
    }
}
