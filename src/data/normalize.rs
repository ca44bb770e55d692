//! Intensity normalisation of images read from files, for 16-bit microscopy above all.
//!
//! A 16-bit fluorescence image often uses a few hundred grey levels of the 65 536 its type
//! could hold, so dividing by the type's maximum leaves it nearly black; scaling between
//! low and high percentiles (the normalisation of CSBDeep, StarDist and Cellpose, typically
//! 1 and 99.8) spreads the signal over `[0, 1]` and clips hot pixels.

use crate::{Error, Result};

/// How pixel values become the network's input. Statistics are taken per channel: for a
/// grey image per image.
///
/// ```
/// use unetpp::data::normalize::Normalize;
/// // One channel of 1x5 values, of a 16-bit image.
/// let mut values = vec![100.0, 200.0, 300.0, 400.0, 60_000.0];
/// Normalize::Percentiles { low: 0.0, high: 75.0 }.apply(&mut values, 1, 65535.0)?;
/// assert_eq!(values, [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Normalize {
    /// Divide by the largest value of the file's sample type (255 for 8-bit, 65535 for 16-bit
    /// files); floating-point files are taken as they are.
    #[default]
    Scale,
    /// Map each channel's smallest value to 0 and largest to 1. A constant channel becomes 0.
    MinMax,
    /// Clip each channel to its `low`-th and `high`-th percentiles, then map those to 0 and 1
    /// (a channel whose two percentiles are equal becomes 0). Percentiles are in `[0, 100]`,
    /// `low < high`, and computed as [`percentile`] does (`numpy.percentile`'s default).
    Percentiles {
        /// The percentile that becomes 0, e.g. 1.
        low: f64,
        /// The percentile that becomes 1, e.g. 99.8.
        high: f64,
    },
}

impl Normalize {
    /// Percentiles 1 and 99.8, the default of CSBDeep's and StarDist's `normalize`.
    pub const MICROSCOPY: Normalize = Normalize::Percentiles {
        low: 1.0,
        high: 99.8,
    };

    /// Checks the percentiles: both finite, `0 <= low < high <= 100` (an
    /// [`Error::Config`] naming `percentiles` otherwise).
    pub fn validate(&self) -> Result<()> {
        if let Normalize::Percentiles { low, high } = *self {
            if !(0.0 <= low && low < high && high <= 100.0) {
                return Err(Error::config(
                    "percentiles",
                    format!("need 0 <= low < high <= 100, got low {low}, high {high}"),
                ));
            }
        }
        Ok(())
    }

    /// Normalises `values`, channel-major `(C, H, W)` with `channels` channels, in place.
    /// `type_max` is what [`Normalize::Scale`] divides by (255, 65535, or 1 for
    /// floating-point values).
    ///
    /// Non-finite values (NaN, infinities, which only floating-point files hold) are left out
    /// of the minimum, maximum and percentiles; NaN stays NaN, infinities clip to 0 or 1.
    /// Errors: invalid percentiles, `type_max` not finite and positive, or a length that is
    /// not a multiple of `channels`.
    pub fn apply(&self, values: &mut [f32], channels: usize, type_max: f32) -> Result<()> {
        self.validate()?;
        if channels == 0 || !values.len().is_multiple_of(channels) {
            return Err(Error::Shape(format!(
                "{} values do not split into {channels} channels",
                values.len()
            )));
        }
        let plane = values.len() / channels;
        if plane == 0 {
            return Ok(());
        }
        match *self {
            Normalize::Scale => {
                if !(type_max.is_finite() && type_max > 0.0) {
                    return Err(Error::Input(format!(
                        "cannot scale by a maximum of {type_max}"
                    )));
                }
                if type_max != 1.0 {
                    values.iter_mut().for_each(|v| *v /= type_max);
                }
            }
            Normalize::MinMax => {
                for channel in values.chunks_exact_mut(plane) {
                    let finite = channel.iter().copied().filter(|v| v.is_finite());
                    let (lo, hi) = finite.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                        (a.min(v), b.max(v))
                    });
                    rescale(channel, lo as f64, hi as f64);
                }
            }
            Normalize::Percentiles { low, high } => {
                for channel in values.chunks_exact_mut(plane) {
                    let mut finite: Vec<f32> =
                        channel.iter().copied().filter(|v| v.is_finite()).collect();
                    let lo = percentile_in_place(&mut finite, low);
                    let hi = percentile_in_place(&mut finite, high);
                    if let (Some(lo), Some(hi)) = (lo, hi) {
                        rescale(channel, lo, hi);
                    } else {
                        rescale(channel, f64::INFINITY, f64::NEG_INFINITY);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Clips `channel` to `[lo, hi]` and maps that interval to `[0, 1]` (in `f64`, like numpy on
/// `float64` data); every value but NaN becomes 0 when `hi <= lo` (a constant channel, or one
/// without finite values).
fn rescale(channel: &mut [f32], lo: f64, hi: f64) {
    let range = hi - lo;
    for v in channel.iter_mut() {
        if v.is_nan() {
            continue;
        }
        *v = if range > 0.0 {
            (((*v as f64).clamp(lo, hi) - lo) / range) as f32
        } else {
            0.0
        };
    }
}

/// The `q`-th percentile (`q` in `[0, 100]`) of `values`, as `numpy.percentile(values, q)`
/// computes it (its default method, `"linear"`): sorted `x` of `n` values, the virtual index
/// `i = (n - 1) · q / 100` between `x[⌊i⌋]` and `x[⌊i⌋ + 1]` interpolated linearly. `None`
/// for no values or a `q` outside `[0, 100]`; NaN, if present, sorts above every number.
///
/// ```
/// use unetpp::data::normalize::percentile;
/// assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.5));
/// assert_eq!(percentile(&[10.0, 0.0, 5.0], 100.0), Some(10.0));
/// ```
pub fn percentile(values: &[f32], q: f64) -> Option<f64> {
    percentile_in_place(&mut values.to_vec(), q)
}

/// [`percentile`] on a scratch buffer it reorders (a selection, not a full sort).
fn percentile_in_place(values: &mut [f32], q: f64) -> Option<f64> {
    if values.is_empty() || !(0.0..=100.0).contains(&q) {
        return None;
    }
    let index = (values.len() - 1) as f64 * (q / 100.0);
    let below = (index.floor() as usize).min(values.len() - 1);
    let gamma = index - below as f64;
    let (_, &mut a, above) = values.select_nth_unstable_by(below, f32::total_cmp);
    let b = above.iter().copied().min_by(f32::total_cmp).unwrap_or(a);
    Some(lerp(a as f64, b as f64, gamma))
}

/// numpy's `_lerp`: from the nearer end, so that `gamma = 1` gives `b` exactly.
fn lerp(a: f64, b: f64, gamma: f64) -> f64 {
    let diff = b - a;
    if gamma >= 0.5 {
        b - diff * (1.0 - gamma)
    } else {
        a + diff * gamma
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_interpolates_between_neighbours() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&v, 25.0), Some(1.75));
        assert_eq!(percentile(&[7.0], 99.8), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 100.5), None);
    }

    #[test]
    fn rejects_inverted_or_out_of_range_percentiles() {
        for (low, high) in [(50.0, 50.0), (60.0, 40.0), (-1.0, 50.0), (1.0, f64::NAN)] {
            let err = Normalize::Percentiles { low, high }.validate().unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Config {
                        field: "percentiles",
                        ..
                    }
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn min_max_is_per_channel_and_constant_channels_become_zero() {
        let mut v = vec![2.0, 4.0, 6.0, 5.0, 5.0, 5.0];
        Normalize::MinMax.apply(&mut v, 2, 255.0).unwrap();
        assert_eq!(v, [0.0, 0.5, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn non_finite_values_are_left_out_of_the_statistics() {
        let mut v = vec![f32::NAN, 0.0, 2.0, f32::INFINITY];
        Normalize::MinMax.apply(&mut v, 1, 1.0).unwrap();
        assert!(v[0].is_nan());
        assert_eq!(&v[1..], [0.0, 1.0, 1.0]);
    }
}
