//! Training: an AdamW whose state can be saved, atomic checkpoints and resuming, and a
//! training step and evaluation over any [`SegmentationModel`](crate::SegmentationModel).

mod checkpoint;
mod optimizer;

pub use checkpoint::{save_checkpoint, Checkpoint};
pub use optimizer::{AdamW, AdamWState};
