//! Operations candle lacks, each with a forward and a backward pass.

mod bilinear;

pub use bilinear::{resize_bilinear, resize_bilinear_composed};
