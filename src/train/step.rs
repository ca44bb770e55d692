//! One training step and an evaluation pass, for any network and loss.

use candle_core::{Device, Tensor};

use super::AdamW;
use crate::data::loader::DataLoader;
use crate::data::{Batch, Dataset};
use crate::loss::{DeepSupervisionLoss, SegmentationLoss, Target};
use crate::metrics::{labels_from_logits, labels_from_probabilities, SegmentationMetrics};
use crate::model::{Mode, MultiHeadSegmenter};
use crate::Result;

/// One step: forward in training mode, the deep-supervision loss over every head, backward,
/// and an optimizer update. Returns the loss before the update.
///
/// A NaN or infinite loss or gradient is an [`crate::Error::Diverged`], checked (by
/// [`AdamW::backward_step`]) before anything is updated: the weights and the optimizer's
/// state stay as they were, so a checkpoint saved afterwards holds the last good weights.
pub fn train_step<M, L>(
    model: &M,
    loss: &DeepSupervisionLoss<L>,
    optimizer: &mut AdamW,
    batch: &Batch,
) -> Result<f32>
where
    M: MultiHeadSegmenter + ?Sized,
    L: SegmentationLoss,
{
    let out = model.forward_heads(&batch.images, true)?;
    let targets = match loss.loss().target() {
        Target::Masks => &batch.masks,
        Target::Labels => &batch.labels,
    };
    let value = loss.compute(&out, targets)?;
    // `backward_step` refuses a non-finite loss or gradient before it changes anything.
    optimizer.backward_step(&value)?;
    Ok(value
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?)
}

/// Predicted labels `(N, H, W)` of `images` in `mode`.
pub fn predict<M: MultiHeadSegmenter + ?Sized>(
    model: &M,
    images: &Tensor,
    mode: Mode,
) -> Result<Tensor> {
    let out = model.infer(images)?;
    match mode {
        Mode::Accurate => labels_from_probabilities(&out.accurate()?),
        Mode::Fast(col) => labels_from_logits(out.head(col)?),
        Mode::Last => labels_from_logits(out.last()),
    }
}

/// Scores `model` in `mode` on every batch of `loader`'s first epoch (use a loader without
/// augmentation) against the batches' labels.
pub fn evaluate<M, D>(
    model: &M,
    loader: &DataLoader<D>,
    device: &Device,
    mode: Mode,
) -> Result<SegmentationMetrics>
where
    M: MultiHeadSegmenter + ?Sized,
    D: Dataset,
{
    let mut metrics = SegmentationMetrics::new(loader.dataset().num_classes())?;
    for batch in loader.batches(0, device) {
        let batch = batch?;
        metrics.update(&predict(model, &batch.images, mode)?, &batch.labels)?;
    }
    Ok(metrics)
}
