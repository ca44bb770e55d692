//! The float arithmetic the detection kernels need, for `f32` and `f64` alike.
//!
//! torchvision's CPU kernels compute in the tensor's own precision; to agree with them to the
//! last bit where possible, ours are generic over the element type instead of computing in
//! `f64` and rounding at the end.

use candle_core::WithDType;

pub(crate) trait Real: WithDType {
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn sqrt(self) -> Self;
    fn log2(self) -> Self;
    fn is_finite(self) -> bool;
    fn fmax(self, other: Self) -> Self;
    fn fmin(self, other: Self) -> Self;
    fn as_f64(self) -> f64;
    fn from_usize(v: usize) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            fn ceil(self) -> Self {
                <$t>::ceil(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn log2(self) -> Self {
                <$t>::log2(self)
            }
            fn is_finite(self) -> bool {
                <$t>::is_finite(self)
            }
            fn fmax(self, other: Self) -> Self {
                <$t>::max(self, other)
            }
            fn fmin(self, other: Self) -> Self {
                <$t>::min(self, other)
            }
            fn as_f64(self) -> f64 {
                self as f64
            }
            fn from_usize(v: usize) -> Self {
                v as $t
            }
        }
    };
}

impl_real!(f32);
impl_real!(f64);
