//! The instruction-set level of the hand-written CPU kernels, chosen once at run time.
//!
//! The kernels are written once, in portable Rust whose inner loops the compiler vectorises.
//! [`simd_fn!`] compiles the function it defines three times: for the target's baseline, for
//! AVX2 + FMA (x86-64-v3) and for AVX-512 (x86-64-v4), and runs the copy that the level
//! chosen here allows ([`simd_level`]). So one binary uses 16-float vectors on a CPU with
//! AVX-512, 8-float ones on an AVX2-only CPU, and runs everywhere else (aarch64 included) on
//! the baseline copy. The `gemm` crate's matrix kernels make their own choice (AVX-512 where
//! the CPU has it, else AVX2 + FMA, else scalar); the level set here does not change it.
//!
//! The only `unsafe` here, in what [`simd_fn!`] expands to, is the call of a copy compiled
//! with `#[target_feature]`. Its invariant: [`token`] names a level other than `Scalar` only
//! when the CPU has every feature of that level (the stored level is always one that
//! [`supported_simd_levels`] lists: [`set_simd_level`] refuses the others, and the
//! environment's choice is clamped).

use std::sync::OnceLock;

use super::path::Switch;
use crate::{Error, Result};

/// An instruction-set level of unetpp's hand-written CPU kernels (see [`simd_level`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SimdLevel {
    /// The target's baseline, with no feature detected at run time (SSE2 on x86-64, NEON on
    /// aarch64): the path every CPU can take.
    Scalar,
    /// AVX2 and FMA (x86-64-v3): 8 floats per vector.
    Avx2,
    /// AVX-512 F, BW, DQ and VL, with AVX2 and FMA (x86-64-v4): 16 floats per vector.
    Avx512,
}

impl SimdLevel {
    /// Every level, lowest first.
    pub const ALL: [SimdLevel; 3] = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512];

    /// The name `UNETPP_SIMD` takes for this level: `scalar`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
        }
    }

    /// The level a name denotes (as [`name`](Self::name) spells it, any case).
    pub fn from_name(name: &str) -> Option<SimdLevel> {
        SimdLevel::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
    }

    fn from_u8(v: u8) -> SimdLevel {
        match v {
            2 => SimdLevel::Avx512,
            1 => SimdLevel::Avx2,
            _ => SimdLevel::Scalar,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            SimdLevel::Scalar => 0,
            SimdLevel::Avx2 => 1,
            SimdLevel::Avx512 => 2,
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The levels this CPU can run, lowest first (always starting with [`SimdLevel::Scalar`]).
///
/// ```
/// use unetpp::ops::{supported_simd_levels, SimdLevel};
///
/// assert_eq!(supported_simd_levels()[0], SimdLevel::Scalar);
/// ```
pub fn supported_simd_levels() -> Vec<SimdLevel> {
    let (avx2, avx512) = detected();
    let mut levels = vec![SimdLevel::Scalar];
    if avx2 {
        levels.push(SimdLevel::Avx2);
    }
    if avx512 {
        levels.push(SimdLevel::Avx512);
    }
    levels
}

/// Whether the CPU has the features of the AVX2 and of the AVX-512 level (asked once).
fn detected() -> (bool, bool) {
    static FEATURES: OnceLock<(bool, bool)> = OnceLock::new();
    *FEATURES.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c") && has!("bmi1") && has!("bmi2");
            let avx512 =
                avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
            (avx2, avx512)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (false, false)
        }
    })
}

static LEVEL: Switch = Switch::new();

/// The level the hand-written kernels run at: the highest this CPU supports, or the one the
/// environment variable `UNETPP_SIMD` names (`native`, `avx512`, `avx2` or `scalar`; read
/// once), or the last one [`set_simd_level`] chose.
///
/// A level the CPU lacks is never taken: `UNETPP_SIMD=avx512` on an AVX2-only CPU says so on
/// standard error and runs at AVX2. Forcing a lower level lets one machine test the path
/// that another CPU takes:
///
/// ```sh
/// UNETPP_SIMD=scalar cargo test --release
/// ```
pub fn simd_level() -> SimdLevel {
    SimdLevel::from_u8(LEVEL.get(|| level_from_env().to_u8()))
}

/// Runs the hand-written kernels at `level` from now on, for the whole process. A level this
/// CPU does not support is an [`Error::Config`] (see [`supported_simd_levels`]).
///
/// ```
/// use unetpp::ops::{set_simd_level, simd_level, SimdLevel};
///
/// let before = simd_level();
/// set_simd_level(SimdLevel::Scalar)?;
/// assert_eq!(simd_level(), SimdLevel::Scalar);
/// set_simd_level(before)?;
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn set_simd_level(level: SimdLevel) -> Result<()> {
    if !supported_simd_levels().contains(&level) {
        return Err(Error::config(
            "simd_level",
            format!(
                "this CPU does not support {level} (it supports {})",
                names(&supported_simd_levels())
            ),
        ));
    }
    LEVEL.set(level.to_u8());
    Ok(())
}

fn names(levels: &[SimdLevel]) -> String {
    levels
        .iter()
        .map(|l| l.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `UNETPP_SIMD`'s choice, clamped to what the CPU supports; a level above it, or a value
/// that names no level, is reported on standard error.
fn level_from_env() -> SimdLevel {
    let supported = supported_simd_levels();
    let best = supported.last().copied().unwrap_or(SimdLevel::Scalar);
    let value = std::env::var("UNETPP_SIMD").unwrap_or_default();
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("native") {
        return best;
    }
    match SimdLevel::from_name(value) {
        Some(level) if supported.contains(&level) => level,
        Some(level) => {
            let below = supported
                .iter()
                .copied()
                .filter(|l| *l < level)
                .max()
                .unwrap_or(SimdLevel::Scalar);
            eprintln!(
                "unetpp: UNETPP_SIMD={value:?}, but this CPU does not support {level} \
                 (it supports {}); using {below}",
                names(&supported)
            );
            below
        }
        None => {
            eprintln!(
                "unetpp: UNETPP_SIMD={value:?} is not one of native, avx512, avx2, scalar; \
                 using {best}"
            );
            best
        }
    }
}

/// Which copy of a [`simd_fn!`] function runs; handed out by [`token`] only, for the current
/// [`simd_level`].
#[doc(hidden)]
pub(crate) enum Token {
    Scalar,
    Avx2,
    Avx512,
}

/// The token of the current level: `Avx2` or `Avx512` only when the CPU supports it (a
/// level is stored only after [`supported_simd_levels`] listed it).
#[inline(always)]
pub(crate) fn token() -> Token {
    match simd_level() {
        SimdLevel::Avx512 => Token::Avx512,
        SimdLevel::Avx2 => Token::Avx2,
        SimdLevel::Scalar => Token::Scalar,
    }
}

/// Defines a function compiled three times, for the baseline, for AVX2 + FMA and for
/// AVX-512, that runs the copy of the current [`SimdLevel`]. Its body becomes an
/// `#[inline(always)]` function that each copy inlines with its level's target features, so
/// that the compiler vectorises its loops (and the small, inlined helpers they call) for that
/// level. Work that rayon runs on other threads is not inside the copy: put `simd_fn!` on
/// the serial function each task calls. Parameters are plain identifiers; lifetimes may be
/// named, type parameters may not.
///
/// The `unsafe` block it expands to is this module's: a copy with target features runs only
/// when [`token`] says the CPU has them.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $($rest:tt)*) => {
        $crate::ops::simd::simd_fn!(@copies [] $(#[$meta])* $vis $name $($rest)*);
    };
    // An `unsafe` kernel: its copies are `unsafe fn`s with the caller's promise.
    ($(#[$meta:meta])* $vis:vis unsafe fn $name:ident $($rest:tt)*) => {
        $crate::ops::simd::simd_fn!(@copies [unsafe] $(#[$meta])* $vis $name $($rest)*);
    };
    (
        @copies [$($unsafety:tt)?]
        $(#[$meta:meta])*
        $vis:vis $name:ident $(<$($lt:lifetime),+>)?
        ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block
    ) => {
        $(#[$meta])*
        $vis $($unsafety)? fn $name $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            $($unsafety)? fn body $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi1,bmi2")]
            $($unsafety)? fn avx512 $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: for an `unsafe` kernel, the caller's promise (else no unsafe call).
                #[allow(unused_unsafe, unsafe_code)]
                let r = unsafe { body($($arg),*) };
                r
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
            $($unsafety)? fn avx2 $(<$($lt),+>)? ($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: as in `avx512`.
                #[allow(unused_unsafe, unsafe_code)]
                let r = unsafe { body($($arg),*) };
                r
            }
            match $crate::ops::simd::token() {
                #[cfg(target_arch = "x86_64")]
                $crate::ops::simd::Token::Avx512 => {
                    // SAFETY: `token` says Avx512 only when the CPU has these features; for
                    // an `unsafe` kernel the rest is the caller's promise.
                    #[allow(unsafe_code)]
                    let r = unsafe { avx512($($arg),*) };
                    r
                }
                #[cfg(target_arch = "x86_64")]
                $crate::ops::simd::Token::Avx2 => {
                    // SAFETY: as above, for Avx2.
                    #[allow(unsafe_code)]
                    let r = unsafe { avx2($($arg),*) };
                    r
                }
                _ => {
                    // SAFETY: for an `unsafe` kernel, the caller's promise.
                    #[allow(unused_unsafe, unsafe_code)]
                    let r = unsafe { body($($arg),*) };
                    r
                }
            }
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for level in SimdLevel::ALL {
            assert_eq!(SimdLevel::from_name(level.name()), Some(level));
            assert_eq!(SimdLevel::from_u8(level.to_u8()), level);
        }
        assert_eq!(SimdLevel::from_name("AVX512"), Some(SimdLevel::Avx512));
        assert_eq!(SimdLevel::from_name("sse"), None);
    }

    simd_fn! {
        fn doubled_sum(xs: &[f32]) -> f32 {
            xs.iter().map(|x| x * 2.0).sum()
        }
    }

    #[test]
    fn a_simd_fn_computes_its_body_at_the_current_level() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let expected: f32 = (0..1000).map(|i| i as f32).sum();
        assert_eq!(doubled_sum(&xs), expected);
    }
}
