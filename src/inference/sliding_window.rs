//! Sliding-window inference: a network run on overlapping windows of an image (or volume) too
//! large to run whole, the windows' outputs blended into one map.
//!
//! The windows, their order, the padding of inputs smaller than a window and the blending
//! weights are those of MONAI's `sliding_window_inference` (the tests hold a fixture from the
//! real package), for any number of spatial dimensions: `(N, C, H, W)` images take a window of
//! two sizes, `(N, C, D, H, W)` volumes one of three.
//!
//! - **Windows**: along each axis, starts every `⌊window · (1 − overlap)⌋` pixels (at least
//!   one), as many as needed to reach the end; the last start is moved back so that the
//!   window ends at the image's edge. An axis no longer than the window is padded up to it
//!   (half before, half after) and cropped back afterwards.
//! - **Blending**: each window's output is weighted by an importance map (constant, or a
//!   Gaussian centred on the window with `σ = sigma_scale · window`, floored at `1e-3` of
//!   its peak and above), summed, and divided by the sum of the weights at each pixel.
//! - **Memory**: the network sees `batch_size` windows at a time; what is kept besides is
//!   the input, the blended output and one weight total per pixel, on the host.

use candle_core::{DType, Tensor};

use crate::model::{Mode, MultiHeadSegmenter};
use crate::{Error, Result};

/// How overlapping windows are weighted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Blend {
    /// Every pixel of a window weighs the same.
    Constant,
    /// A Gaussian centred on the window, `σ = sigma_scale · window` along each axis (MONAI's
    /// and nnU-Net's default is `0.125`): pixels near a window's edge, which see less context,
    /// weigh less.
    Gaussian {
        /// `σ` as a fraction of the window's size.
        sigma_scale: f64,
    },
}

/// How an input smaller than the window is padded up to it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Padding {
    /// With a constant value (MONAI's default, `0`).
    Constant(f32),
    /// By repeating the edge pixels.
    Replicate,
}

/// Where one call of the predictor stands: `done` of `total` windows, over every image of
/// the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Windows run so far.
    pub done: usize,
    /// Windows to run in all.
    pub total: usize,
}

/// A sliding-window configuration: [`SlidingWindow::builder`] with the window's size,
/// chained setters on the returned [`SlidingWindowBuilder`], then
/// [`SlidingWindowBuilder::build`].
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use unetpp::inference::{Blend, SlidingWindow};
///
/// let sw = SlidingWindow::builder([64, 64])
///     .overlap(0.5)
///     .blend(Blend::Gaussian { sigma_scale: 0.125 })
///     .batch_size(4)
///     .build()?;
/// // Any predictor that maps (B, C, 64, 64) to (B, K, 64, 64); here, a doubling.
/// let image = Tensor::ones((1, 1, 100, 150), DType::F32, &Device::Cpu)?;
/// let out = sw.run(&image, |w| Ok((w * 2.0)?))?;
/// assert_eq!(out.dims(), &[1, 1, 100, 150]);
/// let max = out.flatten_all()?.max(0)?.to_scalar::<f32>()?;
/// assert!((max - 2.0).abs() < 1e-5);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindow {
    window: Vec<usize>,
    overlap: Vec<f64>,
    blend: Blend,
    batch_size: usize,
    padding: Padding,
}

/// Builder of a [`SlidingWindow`]; [`Self::build`] validates.
#[derive(Debug, Clone, PartialEq)]
pub struct SlidingWindowBuilder {
    window: Vec<usize>,
    overlap: Vec<f64>,
    blend: Blend,
    batch_size: usize,
    padding: Padding,
}

impl SlidingWindow {
    /// A builder with MONAI's defaults for the window `window` (one size per spatial axis):
    /// overlap 0.25, constant blending, one window at a time, zero padding.
    pub fn builder(window: impl Into<Vec<usize>>) -> SlidingWindowBuilder {
        SlidingWindowBuilder {
            window: window.into(),
            overlap: vec![0.25],
            blend: Blend::Constant,
            batch_size: 1,
            padding: Padding::Constant(0.0),
        }
    }

    /// A builder holding this configuration.
    pub fn to_builder(&self) -> SlidingWindowBuilder {
        SlidingWindowBuilder {
            window: self.window.clone(),
            overlap: self.overlap.clone(),
            blend: self.blend,
            batch_size: self.batch_size,
            padding: self.padding,
        }
    }

    /// The window's size along each spatial axis.
    pub fn window(&self) -> &[usize] {
        &self.window
    }

    /// The overlap of neighbouring windows along each spatial axis, in `[0, 1)`.
    pub fn overlap(&self) -> &[f64] {
        &self.overlap
    }

    /// How overlapping windows are weighted.
    pub fn blend(&self) -> Blend {
        self.blend
    }

    /// How many windows the predictor gets at once.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// How an input smaller than the window is padded.
    pub fn padding(&self) -> Padding {
        self.padding
    }

    /// The window's start along each axis for every window over an input of spatial size
    /// `size` (after padding an axis shorter than the window up to it), in the order they
    /// run: the first axis slowest.
    pub fn starts(&self, size: &[usize]) -> Result<Vec<Vec<usize>>> {
        let geometry = self.geometry(size)?;
        Ok(geometry.starts)
    }

    /// The importance map of one window, `window` values flattened row-major.
    pub fn importance_map(&self) -> Vec<f32> {
        importance_map(&self.window, self.blend)
    }

    /// Runs `predictor` on every window of `input` (`(N, C, spatial…)`, one spatial axis
    /// per window size) and returns the blended output, `(N, K, spatial…)` in `f32` on the
    /// input's device. The predictor maps a batch of windows `(B, C, window…)` to
    /// `(B, K, window…)`; `B` is at most [`Self::batch_size`] and windows of different
    /// images of the batch may share a call.
    pub fn run<F>(&self, input: &Tensor, predictor: F) -> Result<Tensor>
    where
        F: FnMut(&Tensor) -> Result<Tensor>,
    {
        self.run_with_progress(input, predictor, |_| {})
    }

    /// [`Self::run`], calling `progress` after each call of the predictor.
    pub fn run_with_progress<F, P>(
        &self,
        input: &Tensor,
        mut predictor: F,
        mut progress: P,
    ) -> Result<Tensor>
    where
        F: FnMut(&Tensor) -> Result<Tensor>,
        P: FnMut(Progress),
    {
        let dims = input.dims();
        let rank = self.window.len();
        if dims.len() != rank + 2 {
            return Err(Error::Shape(format!(
                "sliding window of {rank} spatial axes needs a ({}) input, got {dims:?}",
                ["N", "C"]
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n("S", rank))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let (n, original) = (dims[0], dims[2..].to_vec());
        if n == 0 || original.contains(&0) {
            return Err(Error::Shape(format!("input {dims:?} is empty")));
        }
        let geometry = self.geometry(&original)?;
        let input = self.pad(input, &geometry.pad)?;
        let size = &geometry.size;
        let weights = importance_map(&self.window, self.blend);
        let window_len: usize = self.window.iter().product();
        let plane: usize = size.iter().product();

        // The weight total of every pixel depends only on the windows.
        let mut count = vec![0f32; plane];
        for start in &geometry.starts {
            for_each_row(&self.window, start, size, |src, dst, len| {
                for (c, w) in count[dst..dst + len]
                    .iter_mut()
                    .zip(&weights[src..src + len])
                {
                    *c += *w;
                }
            });
        }

        let per_image = geometry.starts.len();
        let total = per_image * n;
        let mut output: Vec<f32> = Vec::new();
        let mut classes = 0;
        let mut done = 0;
        while done < total {
            let ids: Vec<usize> = (done..total.min(done + self.batch_size)).collect();
            let crops = ids
                .iter()
                .map(|&id| {
                    crop(
                        &input,
                        id / per_image,
                        &geometry.starts[id % per_image],
                        &self.window,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            // One copy of each window: `cat` reads the strided views itself.
            let batch = if crops.len() == 1 {
                crops[0].contiguous()?
            } else {
                Tensor::cat(&crops, 0)?
            };
            let out = predictor(&batch)?;
            let od = out.dims().to_vec();
            if od.len() != rank + 2 || od[0] != ids.len() || od[2..] != self.window[..] {
                return Err(Error::Shape(format!(
                    "the predictor turned windows {:?} into {od:?}; it must keep the batch and \
                     the window's size",
                    batch.dims()
                )));
            }
            if output.is_empty() {
                classes = od[1];
                output = vec![0f32; n * classes * plane];
            } else if od[1] != classes {
                return Err(Error::Shape(format!(
                    "the predictor gave {} channels, then {}",
                    classes, od[1]
                )));
            }
            let values = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            for (b, &id) in ids.iter().enumerate() {
                let (image, start) = (id / per_image, &geometry.starts[id % per_image]);
                for k in 0..classes {
                    let win = &values[(b * classes + k) * window_len..][..window_len];
                    let dst_plane = &mut output[(image * classes + k) * plane..][..plane];
                    for_each_row(&self.window, start, size, |src, dst, len| {
                        let row = dst_plane[dst..dst + len].iter_mut();
                        for ((o, p), w) in
                            row.zip(&win[src..src + len]).zip(&weights[src..src + len])
                        {
                            *o += *p * *w;
                        }
                    });
                }
            }
            done += ids.len();
            progress(Progress { done, total });
        }
        for chunk in output.chunks_exact_mut(plane) {
            for (o, c) in chunk.iter_mut().zip(&count) {
                *o /= *c;
            }
        }
        let mut shape = vec![n, classes];
        shape.extend_from_slice(size);
        let mut out = Tensor::from_vec(output, shape, input.device())?;
        for (axis, (&(before, _), &len)) in geometry.pad.iter().zip(&original).enumerate() {
            if before > 0 || len != size[axis] {
                out = out.narrow(axis + 2, before, len)?;
            }
        }
        Ok(out)
    }

    /// Sliding-window probabilities of `model` in `mode`: [`Mode::probabilities`] of every
    /// window, blended. `images` is `(N, C, spatial…)`; the window must suit the network
    /// (for UNet++, a multiple of `2^depth` along each axis unless it pads).
    pub fn probabilities<M>(&self, model: &M, images: &Tensor, mode: Mode) -> Result<Tensor>
    where
        M: MultiHeadSegmenter + ?Sized,
    {
        self.run(images, |w| mode.probabilities(&model.infer(w)?))
    }

    fn geometry(&self, size: &[usize]) -> Result<Geometry> {
        if size.len() != self.window.len() {
            return Err(Error::Shape(format!(
                "a window of {} axes over an input of {} spatial axes ({size:?})",
                self.window.len(),
                size.len()
            )));
        }
        let mut pad = Vec::with_capacity(size.len());
        let mut padded = Vec::with_capacity(size.len());
        let mut axis_starts = Vec::with_capacity(size.len());
        for ((&len, &win), &overlap) in size.iter().zip(&self.window).zip(&self.overlap) {
            let diff = win.saturating_sub(len);
            pad.push((diff / 2, diff - diff / 2));
            let len = len.max(win);
            padded.push(len);
            let interval = if win == len {
                win
            } else {
                ((win as f64 * (1.0 - overlap)) as usize).max(1)
            };
            let count = (0..len.div_ceil(interval))
                .find(|d| d * interval + win >= len)
                .map_or(1, |d| d + 1);
            axis_starts.push(
                (0..count)
                    .map(|i| {
                        let s = i * interval;
                        s - (s + win).saturating_sub(len)
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let mut starts = vec![Vec::new()];
        for axis in &axis_starts {
            starts = starts
                .into_iter()
                .flat_map(|prefix| {
                    axis.iter().map(move |&s| {
                        let mut v = prefix.clone();
                        v.push(s);
                        v
                    })
                })
                .collect();
        }
        Ok(Geometry {
            pad,
            size: padded,
            starts,
        })
    }

    fn pad(&self, input: &Tensor, pad: &[(usize, usize)]) -> Result<Tensor> {
        let mut x = input.clone();
        for (axis, &(before, after)) in pad.iter().enumerate() {
            if before + after == 0 {
                continue;
            }
            let dim = axis + 2;
            x = match self.padding {
                Padding::Replicate => x.pad_with_same(dim, before, after)?,
                Padding::Constant(v) => {
                    let fill = |len: usize| -> Result<Tensor> {
                        let mut shape = x.dims().to_vec();
                        shape[dim] = len;
                        Ok(Tensor::full(v, shape, x.device())?.to_dtype(x.dtype())?)
                    };
                    let mut parts = Vec::with_capacity(3);
                    if before > 0 {
                        parts.push(fill(before)?);
                    }
                    parts.push(x.clone());
                    if after > 0 {
                        parts.push(fill(after)?);
                    }
                    Tensor::cat(&parts, dim)?
                }
            };
        }
        Ok(x)
    }
}

impl SlidingWindowBuilder {
    /// The overlap of neighbouring windows, the same along every axis, in `[0, 1)`.
    pub fn overlap(mut self, overlap: f64) -> Self {
        self.overlap = vec![overlap];
        self
    }

    /// The overlap along each spatial axis, in `[0, 1)`.
    pub fn overlap_per_axis(mut self, overlap: impl Into<Vec<f64>>) -> Self {
        self.overlap = overlap.into();
        self
    }

    /// How overlapping windows are weighted.
    pub fn blend(mut self, blend: Blend) -> Self {
        self.blend = blend;
        self
    }

    /// How many windows the predictor gets at once (memory grows with it).
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How an input smaller than the window is padded up to it.
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// Validates: at least one axis, no empty window, overlaps in `[0, 1)` (one, or one per
    /// axis), a Gaussian's `sigma_scale` finite and positive, a batch of at least one window.
    pub fn build(self) -> Result<SlidingWindow> {
        let rank = self.window.len();
        if rank == 0 || self.window.contains(&0) {
            return Err(Error::config(
                "window",
                format!(
                    "needs a positive size per spatial axis, got {:?}",
                    self.window
                ),
            ));
        }
        let overlap = match self.overlap.len() {
            1 => vec![self.overlap[0]; rank],
            len if len == rank => self.overlap,
            len => {
                return Err(Error::config(
                    "overlap",
                    format!("{len} overlaps for a window of {rank} axes"),
                ))
            }
        };
        if let Some(o) = overlap.iter().find(|o| !(0.0..1.0).contains(*o)) {
            return Err(Error::config(
                "overlap",
                format!("must be in [0, 1), got {o}"),
            ));
        }
        if let Blend::Gaussian { sigma_scale } = self.blend {
            if !(sigma_scale.is_finite() && sigma_scale > 0.0) {
                return Err(Error::config(
                    "blend",
                    format!("a Gaussian's sigma_scale must be positive, got {sigma_scale}"),
                ));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if let Padding::Constant(v) = self.padding {
            if !v.is_finite() {
                return Err(Error::config("padding", format!("value {v} is not finite")));
            }
        }
        Ok(SlidingWindow {
            window: self.window,
            overlap,
            blend: self.blend,
            batch_size: self.batch_size,
            padding: self.padding,
        })
    }
}

/// Where the windows go over one input.
struct Geometry {
    /// Padding before and after along each spatial axis.
    pad: Vec<(usize, usize)>,
    /// The padded spatial size.
    size: Vec<usize>,
    /// Every window's start, first axis slowest.
    starts: Vec<Vec<usize>>,
}

/// The window `start` of image `image` of `input`, `(1, C, window…)`: a view, not a copy.
fn crop(input: &Tensor, image: usize, start: &[usize], window: &[usize]) -> Result<Tensor> {
    let mut x = input.narrow(0, image, 1)?;
    for (axis, (&s, &w)) in start.iter().zip(window).enumerate() {
        x = x.narrow(axis + 2, s, w)?;
    }
    Ok(x)
}

/// Calls `f(src, dst, len)` for every row (run along the last axis) of a window at `start`
/// in an array of spatial size `size`: `src` indexes the window, `dst` the array.
fn for_each_row(
    window: &[usize],
    start: &[usize],
    size: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let rank = window.len();
    let len = window[rank - 1];
    let rows: usize = window[..rank - 1].iter().product();
    let mut index = vec![0usize; rank - 1];
    for row in 0..rows {
        let mut dst = 0;
        for axis in 0..rank - 1 {
            dst = dst * size[axis] + start[axis] + index[axis];
        }
        dst = dst * size[rank - 1] + start[rank - 1];
        f(row * len, dst, len);
        for axis in (0..rank - 1).rev() {
            index[axis] += 1;
            if index[axis] < window[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
}

/// The weights of one window, row-major: ones, or a separable Gaussian computed in `f32` as
/// MONAI does (`exp(x² / (−2σ²))` at `x = −(w−1)/2, …, (w−1)/2`), then floored at its
/// smallest value or `1e-3`, whichever is larger.
fn importance_map(window: &[usize], blend: Blend) -> Vec<f32> {
    let len: usize = window.iter().product();
    let sigma_scale = match blend {
        Blend::Constant => return vec![1.0; len],
        Blend::Gaussian { sigma_scale } => sigma_scale,
    };
    let mut map = vec![1f32];
    for &w in window {
        let sigma = w as f64 * sigma_scale;
        let denom = (-2.0 * sigma * sigma) as f32;
        let axis: Vec<f32> = (0..w)
            .map(|i| {
                let x = i as f32 - (w as f32 - 1.0) / 2.0;
                (x * x / denom).exp()
            })
            .collect();
        map = map
            .iter()
            .flat_map(|&m| axis.iter().map(move |&a| m * a))
            .collect();
    }
    let floor = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
    for v in &mut map {
        *v = v.max(floor);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_monais_placement() -> Result<()> {
        // MONAI's dense_patch_slices((100, 64), (32, 32), (24, 24)): steps of 24, the last
        // start moved back so that the window ends at the edge (72 -> 68, 48 -> 32).
        let sw = SlidingWindow::builder([32, 32]).build()?;
        let starts = sw.starts(&[100, 64])?;
        let rows: Vec<usize> = starts.iter().map(|s| s[0]).collect();
        assert_eq!(rows, [0, 0, 0, 24, 24, 24, 48, 48, 48, 68, 68, 68]);
        let cols: Vec<usize> = starts.iter().map(|s| s[1]).collect();
        assert_eq!(cols, [0, 24, 32].repeat(4));
        // An axis shorter than the window is padded to it: one start.
        assert_eq!(sw.starts(&[20, 32])?, vec![vec![0, 0]]);
        Ok(())
    }

    #[test]
    fn the_gaussian_map_is_separable_and_floored() {
        let map = importance_map(&[5, 3], Blend::Gaussian { sigma_scale: 0.125 });
        assert_eq!(map.len(), 15);
        // Centre 1; σ = 0.625 along the first axis: two pixels out is exp(-4 / 0.78125).
        assert_eq!(map[2 * 3 + 1], 1.0);
        let far = (-4.0f32 / 0.781_25).exp();
        assert!((map[1] - far).abs() < 1e-7, "{}", map[1]);
        // The corners, below 1e-3, are floored to it.
        assert_eq!(map[0], 1e-3);
    }

    #[test]
    fn bad_configurations_are_errors() {
        for b in [
            SlidingWindow::builder(Vec::new()),
            SlidingWindow::builder([0, 8]),
            SlidingWindow::builder([8, 8]).overlap(1.0),
            SlidingWindow::builder([8, 8]).overlap_per_axis([0.5, 0.5, 0.5]),
            SlidingWindow::builder([8, 8]).batch_size(0),
            SlidingWindow::builder([8, 8]).blend(Blend::Gaussian { sigma_scale: 0.0 }),
            SlidingWindow::builder([8, 8]).padding(Padding::Constant(f32::NAN)),
        ] {
            assert!(matches!(b.build(), Err(Error::Config { .. })));
        }
    }
}
