//! Operations candle lacks or runs slowly, each with a forward and a backward pass.

mod bilinear;
mod channels;
mod conv;
mod cpu;
mod transposed;
mod winograd;
mod winograd_wgrad;

pub use bilinear::{resize_bilinear, resize_bilinear_composed};
pub use channels::bias_add;
pub use conv::{
    conv1x1, conv3x3, conv3x3_concat, conv3x3_fused, conv_transpose2x2, cpu_conv_algo,
    fast_cpu_conv, set_cpu_conv_algo, set_fast_cpu_conv, takes_fast_path, CpuConvAlgo,
};
