//! Pooling of boxes from a feature pyramid: each box is pooled by [`RoiAlign`] from the one
//! level that suits its size, as `torchvision.ops.MultiScaleRoIAlign` does.

use candle_core::{DType, Tensor};

use super::boxes::host_boxes;
use super::real::Real;
use super::roi_align::{rois_from_boxes, RoiAlign};
use crate::{Error, Result};

/// RoIAlign over a feature pyramid with the level of each box chosen from its size
/// (Eq. 1 of the FPN paper, Lin et al. 2017): `k = floor(k0 + log2(sqrt(area) / 224) + 1e-6)`
/// with `k0 = 4`, clamped to the pyramid's levels.
///
/// The levels' scales are inferred from the feature sizes against the largest image size
/// (rounded to powers of two), as torchvision infers them; torchvision caches them at the
/// first call, this type infers them at every call (the same result for a fixed pyramid).
/// Boxes are pooled with `aligned = false`, as in torchvision.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use unetpp::ops::MultiScaleRoiAlign;
/// let dev = Device::Cpu;
/// // A 64×64 image with maps at strides 4, 8, 16, 32.
/// let features: Vec<Tensor> = [16, 8, 4, 2].iter()
///     .map(|&s| Tensor::zeros((1, 4, s, s), DType::F32, &dev).unwrap()).collect();
/// let boxes = vec![Tensor::new(&[[0f32, 0., 30., 30.], [8., 8., 60., 40.]], &dev).unwrap()];
/// let pooled = MultiScaleRoiAlign::mask_rcnn_boxes().forward(&features, &boxes, &[(64, 64)]).unwrap();
/// assert_eq!(pooled.dims(), &[2, 4, 7, 7]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiScaleRoiAlign {
    output_size: (usize, usize),
    sampling_ratio: i64,
    canonical_scale: f64,
    canonical_level: i64,
    eps: f64,
}

impl MultiScaleRoiAlign {
    /// Pools to `output_size` with `sampling_ratio` (≤ 0: adaptive), canonical box size 224 at
    /// level 4, eps 1e-6.
    pub fn new(output_size: (usize, usize), sampling_ratio: i64) -> Self {
        MultiScaleRoiAlign {
            output_size,
            sampling_ratio,
            canonical_scale: 224.0,
            canonical_level: 4,
            eps: 1e-6,
        }
    }

    /// torchvision's Mask R-CNN box pooler: 7×7, sampling ratio 2.
    pub fn mask_rcnn_boxes() -> Self {
        Self::new((7, 7), 2)
    }

    /// torchvision's Mask R-CNN mask pooler: 14×14, sampling ratio 2.
    pub fn mask_rcnn_masks() -> Self {
        Self::new((14, 14), 2)
    }

    /// Sets the box size (`scale`, default 224) that maps to pyramid level `level` (default 4).
    pub fn with_canonical(mut self, scale: f64, level: i64) -> Self {
        self.canonical_scale = scale;
        self.canonical_level = level;
        self
    }

    /// The output size `(height, width)`.
    pub fn output_size(&self) -> (usize, usize) {
        self.output_size
    }

    /// The scale of each feature map relative to the largest of `image_sizes` (`(h, w)` each),
    /// from the heights, rounded to a power of two (`torchvision`'s `_infer_scale`).
    pub fn infer_scales(features: &[Tensor], image_sizes: &[(usize, usize)]) -> Result<Vec<f64>> {
        let max_h = image_sizes.iter().map(|s| s.0).max().unwrap_or(0);
        if max_h == 0 {
            return Err(Error::Input(
                "MultiScaleRoiAlign: image_sizes is empty or has a zero height".into(),
            ));
        }
        features
            .iter()
            .map(|f| {
                let (_, _, h, _) = f.dims4().map_err(|_| {
                    Error::Shape(format!(
                        "MultiScaleRoiAlign: feature maps must be (N, C, H, W), got {:?}",
                        f.dims()
                    ))
                })?;
                let approx = (h as f64 / max_h as f64) as f32;
                Ok(2f64.powf(f64::from(approx.log2().round_ties_even())))
            })
            .collect()
    }

    /// The pyramid level (0-based index into the feature list) of every box, in order:
    /// levels `k_min..=k_max` are those of the feature maps (`k = -log2(scale)`).
    pub fn levels(&self, boxes: &[Tensor], k_min: i64, k_max: i64) -> Result<Vec<usize>> {
        if k_min > k_max {
            return Err(Error::Input(format!(
                "MultiScaleRoiAlign: levels {k_min}..={k_max} are empty"
            )));
        }
        if !(self.canonical_scale.is_finite() && self.canonical_scale > 0.0) {
            return Err(Error::config(
                "canonical_scale",
                format!("must be finite and positive, got {}", self.canonical_scale),
            ));
        }
        let mut out = Vec::new();
        for (i, b) in boxes.iter().enumerate() {
            let what = format!("MultiScaleRoiAlign boxes of image {i}");
            if b.dtype() == DType::F64 {
                self.levels_of::<f64>(b, &what, k_min, k_max, &mut out)?;
            } else {
                self.levels_of::<f32>(b, &what, k_min, k_max, &mut out)?;
            }
        }
        Ok(out)
    }

    fn levels_of<T: Real>(
        &self,
        boxes: &Tensor,
        what: &str,
        k_min: i64,
        k_max: i64,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        let s0 = T::from_f64(self.canonical_scale);
        let k0 = T::from_f64(self.canonical_level as f64);
        let eps = T::from_f64(self.eps);
        for b in host_boxes::<T>(boxes, what)? {
            let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
            let k = (k0 + (s / s0).log2() + eps).floor().as_f64();
            // An empty box has log2(0) = -inf: the finest level, as the clamp gives.
            if k.is_nan() {
                return Err(Error::Input(format!(
                    "{what}: no pyramid level for box [{}, {}, {}, {}]",
                    b[0], b[1], b[2], b[3]
                )));
            }
            let k = k.clamp(k_min as f64, k_max as f64) as i64;
            out.push((k - k_min) as usize);
        }
        Ok(())
    }

    /// Pools every box of `boxes` (one `(K_i, 4)` tensor per image, image coordinates) from
    /// `features` (finest first, all `(N, C, H_l, W_l)`), giving `(ΣK_i, C, out_h, out_w)` in
    /// box order. `image_sizes` are the images' `(height, width)` before batching.
    pub fn forward(
        &self,
        features: &[Tensor],
        boxes: &[Tensor],
        image_sizes: &[(usize, usize)],
    ) -> Result<Tensor> {
        let first = features
            .first()
            .ok_or_else(|| Error::Input("MultiScaleRoiAlign: no feature maps".into()))?;
        let scales = Self::infer_scales(features, image_sizes)?;
        let rois = rois_from_boxes(boxes)?;
        let align = |scale: f64| {
            RoiAlign::new(self.output_size)
                .with_spatial_scale(scale)
                .with_sampling_ratio(self.sampling_ratio)
        };
        if features.len() == 1 {
            return align(scales[0]).forward(first, &rois);
        }
        let level_of = |s: f64| -> i64 { -(s as f32).log2() as i64 };
        let (k_min, k_max) = (level_of(scales[0]), level_of(scales[scales.len() - 1]));
        if k_max - k_min + 1 != features.len() as i64 {
            return Err(Error::Shape(format!(
                "MultiScaleRoiAlign: feature scales {scales:?} are not consecutive powers of two"
            )));
        }
        let levels = self.levels(boxes, k_min, k_max)?;
        let dev = rois.device();
        let (mut parts, mut order) = (Vec::new(), Vec::with_capacity(levels.len()));
        for (l, (feat, &scale)) in features.iter().zip(&scales).enumerate() {
            let idx: Vec<u32> = (0..levels.len())
                .filter(|&i| levels[i] == l)
                .map(|i| i as u32)
                .collect();
            if idx.is_empty() {
                continue;
            }
            order.extend_from_slice(&idx);
            let sel = Tensor::from_vec(idx.clone(), idx.len(), dev)?;
            parts.push(align(scale).forward(feat, &rois.index_select(&sel, 0)?)?);
        }
        if parts.is_empty() {
            let (_, c, _, _) = first.dims4()?;
            let (oh, ow) = self.output_size;
            return Ok(Tensor::zeros(
                (0, c, oh, ow),
                first.dtype(),
                first.device(),
            )?);
        }
        // `order[j]` is the box behind row j of the concatenation; invert it.
        let mut inverse = vec![0u32; order.len()];
        for (row, &i) in order.iter().enumerate() {
            inverse[i as usize] = row as u32;
        }
        let inverse = Tensor::from_vec(inverse, order.len(), first.device())?;
        Ok(Tensor::cat(&parts, 0)?.index_select(&inverse, 0)?)
    }
}
