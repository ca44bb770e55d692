//! The ground truth of a training image, and its checks against the image.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

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
        let boxes = crate::ops::host_f64(&self.boxes)?.to_vec2::<f64>()?;
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
