//! Training: an AdamW whose state can be saved, atomic checkpoints and resuming, and a
//! training step and evaluation over any [`MultiHeadSegmenter`](crate::MultiHeadSegmenter).

mod checkpoint;
mod optimizer;
mod step;

pub use crate::model::Mode;
pub use checkpoint::{save_checkpoint, Checkpoint};
pub use optimizer::{AdamW, AdamWState};
pub use step::{evaluate, predict, train_step};

pub(crate) use crate::weights::lock_vars;
