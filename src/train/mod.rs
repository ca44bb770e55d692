//! Training: an optimizer whose state can be saved, checkpoints, and resuming.
