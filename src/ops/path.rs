//! Which path the ops take: their CPU kernels, or the device-generic compositions of candle
//! ops that run on CUDA and Metal. One process-wide switch ([`set_device_generic`]) makes the
//! CPU take the generic path too, so that the code GPUs run is tested on machines without one.

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::Device;

/// A process-wide switch holding a `u8`: what its setter stored last, or else what the
/// environment says, read at the first [`get`](Switch::get) (a setter that runs concurrently
/// with that first read wins over the environment). The ops' switches are all of this kind:
/// the device-generic path here, `UNETPP_CPU_CONV` and `UNETPP_SIMD`.
pub(super) struct Switch(AtomicU8);

impl Switch {
    /// The value that means "not read yet"; never a switch's value.
    pub(super) const UNSET: u8 = u8::MAX;

    pub(super) const fn new() -> Self {
        Self(AtomicU8::new(Self::UNSET))
    }

    pub(super) fn set(&self, value: u8) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The value, `from_env()` at the first call unless a setter came first.
    pub(super) fn get(&self, from_env: impl FnOnce() -> u8) -> u8 {
        match self.0.load(Ordering::Relaxed) {
            Self::UNSET => {
                let value = from_env();
                match self.0.compare_exchange(
                    Self::UNSET,
                    value,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => value,
                    Err(current) => current,
                }
            }
            value => value,
        }
    }
}

static GENERIC: Switch = Switch::new();

/// Makes every op take its device-generic path on the CPU as well (`true`), or its CPU kernel
/// there again (`false`), for the whole process.
///
/// The generic path is what runs on CUDA and Metal: compositions of candle ops, no `f64`
/// tensor on the device, helper tensors built in the working dtype. Running a program or the
/// test suite in this mode on the CPU checks that path where no GPU is at hand. The default is
/// `false`, or `true` when the environment variable `UNETPP_DEVICE_GENERIC` is `1`
/// (read once, at the first op):
///
/// ```sh
/// UNETPP_DEVICE_GENERIC=1 cargo test --release
/// ```
///
/// ```
/// use unetpp::ops::{device_generic, set_device_generic};
///
/// set_device_generic(true);
/// assert!(device_generic());
/// set_device_generic(false);
/// ```
pub fn set_device_generic(on: bool) {
    GENERIC.set(u8::from(on));
}

/// Whether the ops take their device-generic path on the CPU (see [`set_device_generic`]).
pub fn device_generic() -> bool {
    GENERIC.get(|| u8::from(from_env())) == 1
}

/// `UNETPP_DEVICE_GENERIC`'s choice; a value other than `0`, `1` or empty is reported on
/// standard error and ignored.
fn from_env() -> bool {
    match std::env::var("UNETPP_DEVICE_GENERIC") {
        Ok(v) => match v.trim() {
            "1" | "true" => true,
            "0" | "false" | "" => false,
            other => {
                eprintln!(
                    "unetpp: UNETPP_DEVICE_GENERIC={other:?} is not 0 or 1; using the CPU kernels"
                );
                false
            }
        },
        Err(_) => false,
    }
}

/// Whether an op on `device` runs its CPU kernel: on the CPU, unless the generic path is
/// forced there.
pub(crate) fn cpu_kernels(device: &Device) -> bool {
    device.is_cpu() && !device_generic()
}

/// A tensor of `values` on `device` in `dtype`, converted on the host first: helper tables
/// computed in `f64` (interpolation weights, normalisation constants) never exist as `f64`
/// on a device, which Metal lacks.
pub(crate) fn host_tensor<T: candle_core::WithDType, S: Into<candle_core::Shape>>(
    values: Vec<T>,
    shape: S,
    dtype: candle_core::DType,
    device: &Device,
) -> candle_core::Result<candle_core::Tensor> {
    candle_core::Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// The values of `t` as `f64` on the host: copied off the device first, then widened, so
/// that no `f64` tensor is made on the device.
#[cfg(feature = "detection")]
pub(crate) fn host_f64(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    t.to_device(&Device::Cpu)?.to_dtype(candle_core::DType::F64)
}
