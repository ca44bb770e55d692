//! Data for training and evaluation.

pub mod synthetic;
