//! Matching predictions (anchors, proposals) to ground-truth boxes by a quality matrix, as
//! torchvision's `Matcher` does.
//!
//! Each prediction takes the ground truth it overlaps most; it is a match if that quality
//! reaches the high threshold, a negative below the low threshold, and ignored in between
//! (Faster R-CNN, Ren et al. 2015, §3.1.2: IoU ≥ 0.7 positive, < 0.3 negative in the RPN).
//! So that every ground truth gets some anchor, the RPN also keeps the matches of each
//! ground truth's best predictions, however low their quality.
//!
//! Matching runs with tensor ops on the matrix's device: only whether it holds a NaN is read
//! back to the host.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use unetpp::maskrcnn::Matcher;
//!
//! // Two ground truths (rows) against four anchors (columns).
//! let iou = Tensor::new(&[[0.8f32, 0.5, 0.1, 0.0], [0.2, 0.6, 0.25, 0.0]], &Device::Cpu)?;
//! let roi = Matcher::roi_heads().matches(&iou)?.to_vec1::<i64>()?;
//! assert_eq!(roi, [0, 1, -1, -1]);
//! let rpn = Matcher::rpn().matches(&iou)?.to_vec1::<i64>()?;
//! // Anchor 1 is ground truth 1's best (0.6 < 0.7), so it is kept as a low-quality match.
//! assert_eq!(rpn, [0, 1, -1, -1]);
//! # Ok::<(), unetpp::Error>(())
//! ```

use candle_core::{DType, Device, Tensor};

use crate::ops::host_tensor;
use crate::{Error, Result};

/// Assigns each prediction a ground-truth index or a negative label:
/// torchvision's `torchvision.models.detection._utils.Matcher`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matcher {
    high_threshold: f64,
    low_threshold: f64,
    allow_low_quality_matches: bool,
}

impl Matcher {
    /// The label of a prediction whose best quality is below the low threshold (a negative).
    pub const BELOW_LOW_THRESHOLD: i64 = -1;
    /// The label of a prediction whose best quality is in `[low, high)` (ignored).
    pub const BETWEEN_THRESHOLDS: i64 = -2;

    /// A matcher: qualities `≥ high_threshold` match, those `< low_threshold` are
    /// [`Matcher::BELOW_LOW_THRESHOLD`], those in between [`Matcher::BETWEEN_THRESHOLDS`].
    /// With `allow_low_quality_matches`, each ground truth's best predictions keep their
    /// match whatever its quality (see [`Matcher::matches`]).
    ///
    /// Fails if `low_threshold > high_threshold` or either is NaN.
    pub fn new(
        high_threshold: f64,
        low_threshold: f64,
        allow_low_quality_matches: bool,
    ) -> Result<Self> {
        if high_threshold.is_nan() {
            return Err(Error::config("high_threshold", "is NaN"));
        }
        if low_threshold.is_nan() || low_threshold > high_threshold {
            return Err(Error::config(
                "low_threshold",
                format!("must be <= high_threshold {high_threshold}, got {low_threshold}"),
            ));
        }
        Ok(Matcher {
            high_threshold,
            low_threshold,
            allow_low_quality_matches,
        })
    }

    /// The region proposal network's matcher: thresholds 0.7 and 0.3, low-quality matches
    /// allowed.
    pub fn rpn() -> Self {
        Matcher {
            high_threshold: 0.7,
            low_threshold: 0.3,
            allow_low_quality_matches: true,
        }
    }

    /// The box head's matcher (`RoIHeads`): both thresholds 0.5, no low-quality matches.
    pub fn roi_heads() -> Self {
        Matcher {
            high_threshold: 0.5,
            low_threshold: 0.5,
            allow_low_quality_matches: false,
        }
    }

    /// The high threshold.
    pub fn high_threshold(&self) -> f64 {
        self.high_threshold
    }

    /// The low threshold.
    pub fn low_threshold(&self) -> f64 {
        self.low_threshold
    }

    /// Whether each ground truth's best predictions keep their match.
    pub fn allow_low_quality_matches(&self) -> bool {
        self.allow_low_quality_matches
    }

    /// Matches the `N` predictions of `quality`, an `(M, N)` floating-point matrix of
    /// (ground truth, prediction) qualities such as IoUs: an i64 tensor of length `N`,
    /// on the matrix's device, holding a ground-truth index in `0..M` or a negative label.
    ///
    /// A prediction's candidate is the ground truth of highest quality in its column (the
    /// first on ties). The thresholds are compared in the matrix's dtype, as PyTorch
    /// compares a tensor with a Python number: for an f32 matrix `0.7` means `0.7f32`.
    ///
    /// With low-quality matches allowed, for every ground truth each prediction that reaches
    /// its row's maximum exactly (ties included) gets back its candidate, which is the
    /// best ground truth *of its column*, not necessarily that row's. A ground truth that
    /// overlaps nothing has a row maximum of 0, so every prediction of quality 0 with it
    /// gets its candidate back: torchvision behaves the same.
    ///
    /// It runs as tensor ops on the matrix's device, in its dtype (no f64 on a device):
    /// only whether the matrix holds a NaN is read back, one value.
    ///
    /// Fails if the matrix is not 2-D, has no ground truth or no prediction (torchvision
    /// raises `ValueError`), is not floating-point, or contains a NaN.
    pub fn matches(&self, quality: &Tensor) -> Result<Tensor> {
        let (m, n) = quality.dims2().map_err(|_| {
            Error::Shape(format!(
                "Matcher expects an (M ground truths, N predictions) matrix, got shape {:?}",
                quality.dims()
            ))
        })?;
        if m == 0 {
            return Err(Error::Input(
                "Matcher: no ground-truth boxes available (the quality matrix has 0 rows)".into(),
            ));
        }
        if n == 0 {
            return Err(Error::Input(
                "Matcher: no proposal boxes available (the quality matrix has 0 columns)".into(),
            ));
        }
        let dt = quality.dtype();
        if !matches!(dt, DType::F64 | DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::Input(format!(
                "Matcher expects a floating-point quality matrix, got {dt:?}"
            )));
        }
        check_no_nan(quality)?;
        let dev = quality.device();

        // Best ground truth of each column, the first one on ties: the least row index
        // where the column reaches its maximum (argmax's tie order differs between
        // backends). Row indices in u8 while they fit, `m` standing for "not this row".
        let best = quality.max_keepdim(0)?;
        let index_dtype = if m < usize::from(u8::MAX) {
            DType::U8
        } else {
            DType::U32
        };
        let rows = host_tensor((0..m as u32).collect::<Vec<_>>(), (m, 1), index_dtype, dev)?;
        let none = host_tensor(vec![m as u32], (1, 1), index_dtype, dev)?;
        let best_gt = quality
            .broadcast_eq(&best)?
            .where_cond(&rows.broadcast_as((m, n))?, &none.broadcast_as((m, n))?)?
            .min(0)?
            .to_dtype(DType::I64)?;

        // The scalar thresholds become tensors of the matrix's dtype on the host (candle
        // converts a scalar before moving it), so that 0.7 means 0.7f32 for an f32 matrix.
        let best = best.squeeze(0)?;
        let label = |v: i64| -> Result<Tensor> { Ok(Tensor::new(&[v], dev)?.broadcast_as(n)?) };
        let mut matches = best.lt(self.low_threshold)?.where_cond(
            &label(Self::BELOW_LOW_THRESHOLD)?,
            &best
                .lt(self.high_threshold)?
                .where_cond(&label(Self::BETWEEN_THRESHOLDS)?, &best_gt)?,
        )?;
        if self.allow_low_quality_matches {
            // Predictions that reach some row's maximum exactly get their candidate back.
            let at_row_max = quality.broadcast_eq(&quality.max_keepdim(1)?)?.max(0)?;
            matches = at_row_max.where_cond(&best_gt, &matches)?;
        }
        Ok(matches)
    }
}

/// An `Error::Input` naming the first NaN of `quality` (row-major). A NaN makes its row's
/// sum NaN: only the `M` row sums are compared, one scalar is read back, and the matrix
/// itself only when a sum is NaN (a NaN, or `+∞` and `−∞` in one row).
fn check_no_nan(quality: &Tensor) -> Result<()> {
    let sums = quality.sum_keepdim(1)?;
    if sums.ne(&sums)?.flatten_all()?.max(0)?.to_scalar::<u8>()? == 0 {
        return Ok(());
    }
    let n = quality.dim(1)?;
    let nan = quality
        .ne(quality)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<u8>()?;
    match nan.iter().position(|&v| v != 0) {
        Some(at) => Err(Error::Input(format!(
            "Matcher: the quality matrix has a NaN at (ground truth {}, prediction {})",
            at / n,
            at % n
        ))),
        None => Ok(()),
    }
}
