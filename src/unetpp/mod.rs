//! UNet++: configuration, the grid of nodes, the model, its outputs.

pub mod config;
pub mod grid;
pub mod model;
pub mod outputs;

pub use config::{UNetPlusPlusConfig, UNetPlusPlusConfigBuilder};
pub use grid::{ConcatOrder, Grid, Input, Node, Skips};
pub use model::{Level, UNetPlusPlus};
pub use outputs::Outputs;
