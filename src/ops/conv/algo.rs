//! Which kernels compute convolutions on the CPU: one process-wide switch
//! ([`set_cpu_conv_algo`]), read by the API in `conv/mod.rs` and by the 3×3 op when it runs.

use candle_core::{DType, Tensor};

use crate::ops::path::Switch;

/// Which kernels compute 3×3 convolutions on the CPU.
///
/// The discriminants are what the process-wide switch ([`set_cpu_conv_algo`]) stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CpuConvAlgo {
    /// candle's own `conv2d` / `conv_transpose2d` (the reference).
    Stock = 0,
    /// Banded unfolding and GEMM (forward, input and weight gradients).
    Gemm = 1,
    /// Winograd F(4×4, 3×3) for the forward pass and the input gradient (4× fewer
    /// multiply-adds) wherever it is faster than [`CpuConvAlgo::Gemm`] (32 input channels or
    /// more on maps of at least 64×64, as measured by `examples/bench_conv.rs`), and
    /// Winograd F(3×3, 2×2) for the weight gradient (2.25× fewer); GEMM elsewhere. The
    /// default.
    Winograd = 2,
}

impl CpuConvAlgo {
    /// The algorithm whose discriminant is `v`, if any.
    const fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(CpuConvAlgo::Stock),
            1 => Some(CpuConvAlgo::Gemm),
            2 => Some(CpuConvAlgo::Winograd),
            _ => None,
        }
    }
}

/// The algorithm's discriminant, or unset until the first call reads `UNETPP_CPU_CONV`.
static CPU_CONV_ALGO: Switch = Switch::new();

/// Chooses the CPU convolution kernels for the whole process. The default is
/// [`CpuConvAlgo::Winograd`], or what the environment variable `UNETPP_CPU_CONV` names
/// (`stock`, `gemm` or `winograd`; read once, at the first convolution), so that a whole
/// program or test suite can be run on each kernel without changing its code:
///
/// ```sh
/// UNETPP_CPU_CONV=stock cargo test --release
/// ```
pub fn set_cpu_conv_algo(algo: CpuConvAlgo) {
    CPU_CONV_ALGO.set(algo as u8);
}

/// The CPU convolution kernels in use (see [`set_cpu_conv_algo`]).
pub fn cpu_conv_algo() -> CpuConvAlgo {
    // Only discriminants are ever stored; anything else would mean the environment's choice.
    CpuConvAlgo::from_u8(CPU_CONV_ALGO.get(|| algo_from_env() as u8)).unwrap_or_else(algo_from_env)
}

/// `UNETPP_CPU_CONV`'s choice; an unknown value is reported on standard error and ignored.
fn algo_from_env() -> CpuConvAlgo {
    match std::env::var("UNETPP_CPU_CONV") {
        Ok(v) => match v.to_ascii_lowercase().as_str() {
            "stock" => CpuConvAlgo::Stock,
            "gemm" => CpuConvAlgo::Gemm,
            "winograd" | "" => CpuConvAlgo::Winograd,
            other => {
                eprintln!(
                    "unetpp: UNETPP_CPU_CONV={other:?} is not one of stock, gemm, winograd; \
                     using winograd"
                );
                CpuConvAlgo::Winograd
            }
        },
        Err(_) => CpuConvAlgo::Winograd,
    }
}

/// Whether unetpp's own kernels are chosen (any algorithm but [`CpuConvAlgo::Stock`]).
pub(super) fn own_kernels() -> bool {
    cpu_conv_algo() != CpuConvAlgo::Stock
}

/// Whether [`conv3x3`](super::conv3x3) would take the fast path for these tensors.
pub fn takes_fast_path(x: &Tensor, w: &Tensor) -> bool {
    own_kernels()
        && crate::ops::path::cpu_kernels(x.device())
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && w.device().same_device(x.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_read_back_and_unset_is_none() {
        for algo in [CpuConvAlgo::Stock, CpuConvAlgo::Gemm, CpuConvAlgo::Winograd] {
            assert_eq!(CpuConvAlgo::from_u8(algo as u8), Some(algo));
        }
        assert_eq!(CpuConvAlgo::from_u8(Switch::UNSET), None);
    }
}
