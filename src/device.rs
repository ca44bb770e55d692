//! Picking a device, and the C allocator's treatment of the CPU's large buffers.

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

/// Asks the C allocator to keep up to `bytes` of freed memory for reuse instead of returning
/// it to the operating system; returns whether it could (glibc on Linux: yes; elsewhere nothing
/// is changed and the answer is `false`). Process-wide, and never called by unetpp itself.
///
/// A training step on the CPU allocates and frees hundreds of megabytes of activations and
/// gradients. glibc hands blocks above a size threshold back to the kernel at once, and trims
/// the top of its heap when more than a few tens of megabytes there are free; the next step
/// then takes a page fault for every 4 KiB it touches again, and the kernel clears each page
/// (with calloc's zero pages, two faults). This call raises both limits to `bytes` (at most
/// 2 GiB − 1, what `mallopt` takes): blocks up to that size come from the heap, and up to that
/// much free heap is kept (glibc before 2.35 takes blocks above 32 MiB from the kernel
/// still). From outside the program,
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N:glibc.malloc.trim_threshold=N` does the same.
/// docs/PERFORMANCE.md has its effect on unetpp and on PyTorch (which gains as much from the
/// variable). The cost: the process keeps its peak memory.
///
/// ```
/// // Keep up to 2 GiB of freed memory (a no-op where the allocator is not glibc).
/// let kept = unetpp::device::keep_freed_memory(2 << 30);
/// # let _ = kept;
/// ```
pub fn keep_freed_memory(bytes: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let limit = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only changes glibc's tuning parameters (it takes the arena lock);
        // any value is allowed, an out-of-range one is refused with 0.
        #[allow(unsafe_code)]
        let (mmap, trimmed) = unsafe {
            // glibc before 2.35 refuses a threshold above 32 MiB.
            let mmap = libc::mallopt(libc::M_MMAP_THRESHOLD, limit) == 1
                || libc::mallopt(libc::M_MMAP_THRESHOLD, limit.min(32 << 20)) == 1;
            (mmap, libc::mallopt(libc::M_TRIM_THRESHOLD, limit) == 1)
        };
        mmap && trimmed
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = bytes;
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_accepts_the_settings() {
        let kept = super::keep_freed_memory(1 << 30);
        assert_eq!(kept, cfg!(all(target_os = "linux", target_env = "gnu")));
    }
}
