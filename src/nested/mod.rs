//! UNet++, the nested network: its grid of nodes `X^{i,j}` (a pure description of which
//! nodes exist and what each reads), its configuration, the model that walks the grid, and
//! the outputs of its heads.

mod config;
mod grid;
mod model;
mod outputs;

pub use config::{UNetPlusPlusConfig, UNetPlusPlusConfigBuilder};
pub use grid::{ConcatOrder, Grid, Input, Node, Skips};
pub(crate) use model::{read_stored, NETWORK_UNET};
pub use model::{Level, UNetPlusPlus};
pub use outputs::Outputs;
