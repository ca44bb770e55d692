//! Training: an AdamW whose state can be saved, atomic checkpoints and resuming, and a
//! training step and evaluation over any [`SegmentationModel`](crate::SegmentationModel).

mod checkpoint;
pub(crate) mod init;
mod optimizer;
mod step;

pub use checkpoint::{save_checkpoint, Checkpoint};
pub use init::seeded_init;
pub use optimizer::{AdamW, AdamWState};
pub use step::{evaluate, predict, train_step, Mode};

/// The variables of `varmap` by name, locked.
pub(crate) fn lock_vars(
    varmap: &candle_nn::VarMap,
) -> crate::Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, candle_core::Var>>> {
    varmap
        .data()
        .lock()
        .map_err(|_| crate::Error::config("varmap", "the VarMap's lock is poisoned"))
}
