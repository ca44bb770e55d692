//! Picking a device.

use candle_core::Device;

use crate::Result;

/// Returns the fastest device the enabled cargo features allow: CUDA, then Metal, then the CPU.
///
/// A GPU feature that is enabled but has no usable GPU falls back to the CPU, and says so on
/// standard error: nothing runs on a slower device without notice.
///
/// ```
/// let device = unetpp::device::best_device(0).unwrap();
/// # let _ = device;
/// ```
pub fn best_device(ordinal: usize) -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        if candle_core::utils::cuda_is_available() {
            return Ok(Device::new_cuda(ordinal)?);
        }
        eprintln!(
            "unetpp: the `cuda` feature is enabled but no CUDA device was found; using the CPU"
        );
    }
    #[cfg(feature = "metal")]
    {
        if candle_core::utils::metal_is_available() {
            return Ok(Device::new_metal(ordinal)?);
        }
        eprintln!(
            "unetpp: the `metal` feature is enabled but no Metal device was found; using the CPU"
        );
    }
    let _ = ordinal;
    Ok(Device::Cpu)
}
