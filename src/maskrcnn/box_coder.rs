//! Box regression targets: boxes to deltas and back, as torchvision's `BoxCoder` computes them.
//!
//! Faster R-CNN (Ren et al., *NeurIPS* 2015, Eq. 2) regresses a box `(x, y, w, h)` (centre,
//! width, height) relative to a reference box `(x_a, y_a, w_a, h_a)` as
//!
//! ```text
//! t_x = w_x (x − x_a) / w_a    t_y = w_y (y − y_a) / h_a
//! t_w = w_w ln(w / w_a)        t_h = w_h ln(h / h_a)
//! ```
//!
//! with per-coordinate weights `(w_x, w_y, w_w, w_h)`: `(1, 1, 1, 1)` in the region proposal
//! network, `(10, 10, 5, 5)` in the box head of Mask R-CNN. Boxes are `(K, 4)` tensors of
//! corners `x1, y1, x2, y2`.
//!
//! Both directions are composed from candle tensor ops, so they run on any device and candle
//! can differentiate them. Like torchvision, neither checks box values: a box of zero width
//! gives infinite or NaN deltas.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use unetpp::maskrcnn::BoxCoder;
//!
//! let dev = Device::Cpu;
//! let anchors = Tensor::new(&[[0f32, 0., 10., 10.]], &dev)?;
//! let gt = Tensor::new(&[[2f32, 1., 14., 9.]], &dev)?;
//! let coder = BoxCoder::roi_heads();
//! let deltas = coder.encode(&gt, &anchors)?; // (1, 4)
//! let back = coder.decode_single(&deltas, &anchors)?; // (1, 4)
//! let err: f32 = (back - &gt)?.abs()?.max_all()?.to_scalar()?;
//! assert!(err < 1e-5);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{DType, Tensor};

use super::div::div_scalar;
use crate::{Error, Result};

/// Encodes boxes as deltas relative to reference boxes, and decodes deltas back into boxes.
///
/// torchvision's `torchvision.models.detection._utils.BoxCoder`: [`BoxCoder::encode`] is its
/// `encode_single`, [`BoxCoder::decode`] its `decode` (on boxes already concatenated over the
/// images of a batch) and [`BoxCoder::decode_single`] its `decode_single`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxCoder {
    weights: [f64; 4],
    clip: f64,
}

impl BoxCoder {
    /// A coder with weights `(w_x, w_y, w_w, w_h)` and torchvision's default clip of the
    /// decoded `t_w, t_h`, `ln(1000 / 16)`: no box grows more than 62.5 times its reference.
    pub fn new(weights: [f64; 4]) -> Self {
        BoxCoder {
            weights,
            clip: (1000.0f64 / 16.0).ln(),
        }
    }

    /// The region proposal network's coder: weights `(1, 1, 1, 1)`.
    pub fn rpn() -> Self {
        Self::new([1.0, 1.0, 1.0, 1.0])
    }

    /// The box head's coder (`RoIHeads` of Mask R-CNN): weights `(10, 10, 5, 5)`.
    pub fn roi_heads() -> Self {
        Self::new([10.0, 10.0, 5.0, 5.0])
    }

    /// Sets the upper bound applied to `t_w / w_w` and `t_h / w_h` before exponentiation in
    /// [`BoxCoder::decode`] (torchvision's `bbox_xform_clip`). There is no lower bound.
    pub fn with_clip(mut self, clip: f64) -> Self {
        self.clip = clip;
        self
    }

    /// The weights `(w_x, w_y, w_w, w_h)`.
    pub fn weights(&self) -> [f64; 4] {
        self.weights
    }

    /// The upper bound of the decoded log-scale deltas.
    pub fn clip(&self) -> f64 {
        self.clip
    }

    /// The deltas `(t_x, t_y, t_w, t_h)`, shape `(K, 4)`, that take each of `proposals` to the
    /// matching box of `reference_boxes` (the ground truth). Both are `(K, 4)`; `proposals`
    /// is converted to the dtype of `reference_boxes`, which the result has.
    pub fn encode(&self, reference_boxes: &Tensor, proposals: &Tensor) -> Result<Tensor> {
        let k = boxes_len("BoxCoder::encode", "reference_boxes", reference_boxes)?;
        let kp = boxes_len("BoxCoder::encode", "proposals", proposals)?;
        if k != kp {
            return Err(Error::Shape(format!(
                "BoxCoder::encode expects as many proposals as reference boxes, got {kp} and {k}"
            )));
        }
        let proposals = proposals.to_dtype(reference_boxes.dtype())?;
        let [wx, wy, ww, wh] = self.weights;
        let ex = Centred::of(&proposals)?;
        let gt = Centred::of(reference_boxes)?;
        let dx = (((&gt.cx - &ex.cx)? * wx)? / &ex.w)?;
        let dy = (((&gt.cy - &ex.cy)? * wy)? / &ex.h)?;
        let dw = ((&gt.w / &ex.w)?.log()? * ww)?;
        let dh = ((&gt.h / &ex.h)?.log()? * wh)?;
        Ok(Tensor::cat(&[dx, dy, dw, dh], 1)?)
    }

    /// Applies the deltas `rel_codes`, shape `(K, 4·C)` (one group of four per class), to
    /// `boxes`, shape `(K, 4)`, and returns the boxes, shape `(K, C, 4)`.
    ///
    /// `boxes` are converted to the dtype of `rel_codes`, which the result has.
    pub fn decode(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        let (k, c) = self.check_codes(rel_codes, boxes)?;
        let boxes = boxes.to_dtype(rel_codes.dtype())?;
        let [wx, wy, ww, wh] = self.weights;
        let codes = rel_codes.reshape((k, c, 4))?;
        let code = |i: usize| codes.narrow(2, i, 1);
        // True divisions, as torchvision's `rel_codes[:, 0::4] / wx`.
        let dx = div_scalar(&code(0)?, wx)?;
        let dy = div_scalar(&code(1)?, wy)?;
        let dw = div_scalar(&code(2)?, ww)?.minimum(self.clip)?;
        let dh = div_scalar(&code(3)?, wh)?.minimum(self.clip)?;

        let r = Centred::of(&boxes)?;
        let per_box = |t: &Tensor| t.reshape((k, 1, 1));
        let (w, h) = (per_box(&r.w)?, per_box(&r.h)?);
        let cx = dx.broadcast_mul(&w)?.broadcast_add(&per_box(&r.cx)?)?;
        let cy = dy.broadcast_mul(&h)?.broadcast_add(&per_box(&r.cy)?)?;
        let half_w = (dw.exp()?.broadcast_mul(&w)? * 0.5)?;
        let half_h = (dh.exp()?.broadcast_mul(&h)? * 0.5)?;
        Ok(Tensor::cat(
            &[
                (&cx - &half_w)?,
                (&cy - &half_h)?,
                (&cx + &half_w)?,
                (&cy + &half_h)?,
            ],
            2,
        )?)
    }

    /// [`BoxCoder::decode`] with the classes flattened: shape `(K, 4·C)`, like `rel_codes`.
    pub fn decode_single(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<Tensor> {
        let decoded = self.decode(rel_codes, boxes)?;
        let (k, c, _) = decoded.dims3()?;
        Ok(decoded.reshape((k, 4 * c))?)
    }

    /// `(K, C)` of `rel_codes`, after checking it against `boxes`.
    fn check_codes(&self, rel_codes: &Tensor, boxes: &Tensor) -> Result<(usize, usize)> {
        let k = boxes_len("BoxCoder::decode", "boxes", boxes)?;
        check_float("BoxCoder::decode", "rel_codes", rel_codes)?;
        let (kc, cols) = rel_codes.dims2().map_err(|_| {
            Error::Shape(format!(
                "BoxCoder::decode expects rel_codes of shape (K, 4·C), got {:?}",
                rel_codes.dims()
            ))
        })?;
        if cols == 0 || cols % 4 != 0 {
            return Err(Error::Shape(format!(
                "BoxCoder::decode expects rel_codes with a positive multiple of 4 columns \
                 (4 per class), got {cols}"
            )));
        }
        if kc != k {
            return Err(Error::Shape(format!(
                "BoxCoder::decode expects one row of rel_codes per box, got {kc} rows for {k} boxes"
            )));
        }
        Ok((k, cols / 4))
    }
}

/// Boxes as centres and sizes, each `(K, 1)`.
struct Centred {
    cx: Tensor,
    cy: Tensor,
    w: Tensor,
    h: Tensor,
}

impl Centred {
    /// `w = x2 − x1`, `cx = x1 + w / 2` (in that order, as torchvision rounds), likewise in y.
    fn of(boxes: &Tensor) -> Result<Self> {
        let col = |i: usize| boxes.narrow(1, i, 1);
        let (x1, y1) = (col(0)?, col(1)?);
        let w = (col(2)? - &x1)?;
        let h = (col(3)? - &y1)?;
        Ok(Centred {
            cx: (&x1 + (&w * 0.5)?)?,
            cy: (&y1 + (&h * 0.5)?)?,
            w,
            h,
        })
    }
}

/// `K` of a `(K, 4)` floating-point box tensor.
fn boxes_len(op: &str, name: &str, boxes: &Tensor) -> Result<usize> {
    check_float(op, name, boxes)?;
    match boxes.dims() {
        &[k, 4] => Ok(k),
        dims => Err(Error::Shape(format!(
            "{op} expects {name} of shape (K, 4), got {dims:?}"
        ))),
    }
}

fn check_float(op: &str, name: &str, t: &Tensor) -> Result<()> {
    match t.dtype() {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        dt => Err(Error::Input(format!(
            "{op} expects floating-point {name}, got {dt:?}"
        ))),
    }
}
