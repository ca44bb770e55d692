//! Operations candle lacks or runs slowly, each with a forward and a backward pass.
//!
//! - Convolutions and bilinear resizing with fast CPU kernels ([`conv3x3`], [`conv2d`] for
//!   any kernel size and stride, [`resize_bilinear`], ...; see [`set_cpu_conv_algo`]), and
//!   training-mode batch normalisation as one op ([`batch_norm_train`]).
//! - Max pooling and nearest up-sampling whose gradients are right ([`max_pool2d`],
//!   [`upsample_nearest2d`]): use them, never candle's `Tensor::max_pool2d` /
//!   `Tensor::upsample_nearest2d`, whose backward passes are wrong in candle 0.11.
//! - Detection ops as torchvision computes them: [`RoiAlign`], [`MultiScaleRoiAlign`],
//!   [`nms()`], [`batched_nms`], [`box_iou`] and the other box utilities.
//!
//! ```
//! # #[cfg(feature = "detection")] {
//! use candle_core::{Device, Tensor};
//! use unetpp::ops::{nms, RoiAlign};
//!
//! let dev = Device::Cpu;
//! let features = Tensor::randn(0f32, 1., (1, 8, 32, 32), &dev)?;
//! let boxes = Tensor::new(&[[4f32, 4., 60., 40.], [6., 6., 60., 42.], [70., 70., 120., 100.]], &dev)?;
//! let scores = Tensor::new(&[0.9f32, 0.8, 0.7], &dev)?;
//! let keep = nms(&boxes, &scores, 0.5)?;
//! assert_eq!(keep.to_vec1::<u32>()?, vec![0, 2]);
//! let rois = unetpp::ops::rois_from_boxes(&[boxes.index_select(&keep, 0)?])?;
//! let pooled = RoiAlign::new((7, 7)).with_spatial_scale(0.25).with_sampling_ratio(2)
//!     .forward(&features, &rois)?;
//! assert_eq!(pooled.dims(), &[2, 8, 7, 7]);
//! # }
//! # Ok::<(), unetpp::Error>(())
//! ```
//!
//! # Where things are
//!
//! Every public item is re-exported here; the files are named by what they compute.
//!
//! - `conv/`: the convolutions. `mod.rs` is the API the layers call ([`conv3x3`],
//!   [`conv3x3_fused`], [`conv3x3_concat`], [`conv1x1`], [`conv2d`], [`conv_transpose2x2`]);
//!   `algo.rs` the one switch between candle's kernels and ours ([`set_cpu_conv_algo`]);
//!   `args.rs` the argument checks and bias handling the entry points share; `shape.rs` the
//!   3×3 convolution's dimensions and input planes; `op3x3.rs` the 3×3 convolution as a
//!   differentiable op, which picks per shape between `gemm.rs` (banded unfolding + GEMM),
//!   `winograd.rs` (forward, F(4×4, 3×3)) and `winograd_wgrad.rs` (weight gradient,
//!   F(3×3, 2×2)); `transposed.rs` the 2×2 stride-2 transposed convolution; `general.rs` any
//!   kernel size, stride and padding.
//! - `detection/`: `boxes.rs`, `nms.rs`, `roi_align/` (the public type and its composed path
//!   in `mod.rs`, the sample points in `sampling.rs`, the CPU kernels in `cpu.rs`),
//!   `poolers.rs` ([`MultiScaleRoiAlign`]), and `real.rs` (the `f32`/`f64` arithmetic they
//!   share).
//! - `norm.rs`: training-mode batch normalisation. `resize.rs`: bilinear resizing. `pool.rs`:
//!   max pooling and nearest up-sampling. `elementwise.rs`: [`bias_add`], [`add_relu`],
//!   [`leaky_relu`], and the per-channel sums and ReLU mask of the convolutions' backward
//!   passes.
//! - `kernel.rs`: the shared unsafe core of the CPU kernels (raw-pointer helpers, the
//!   `gemm` call, banded unfolding); its module doc states the invariants that every `unsafe`
//!   block relies on. `simd.rs`: the instruction-set level of the hand-written kernels
//!   ([`simd_level`], [`set_simd_level`], `UNETPP_SIMD`) and `simd_fn!`, which compiles a
//!   kernel once per level. Only these two and the kernel modules of `conv/` (`general`,
//!   `transposed`, `winograd`, `winograd_wgrad`) may use `unsafe` (`simd_fn!` expands its
//!   one `unsafe` call, the level's copy, where it is used).
//!
//! # Dependencies
//!
//! Which file `use`s which (a DAG; each only imports those listed, and nothing imports
//! upwards or sideways otherwise):
//!
//! - `kernel`, `path` → none
//! - `simd` → `path`
//! - `elementwise`, `norm` → `kernel`, `simd`
//! - `resize`, `pool` → `kernel`
//! - `conv/algo` → `path`
//! - `conv/shape` → none
//! - `conv/args` → `conv/algo`, `elementwise`
//! - `conv/gemm` → `conv/shape`, `kernel`
//! - `conv/winograd`, `conv/winograd_wgrad` → `conv/shape`, `kernel`, `simd`
//! - `conv/general`, `conv/transposed` → `kernel`, `elementwise`, `simd`
//! - `conv/op3x3` → `conv/algo`, `conv/shape`, `conv/gemm`, `conv/winograd`,
//!   `conv/winograd_wgrad`, `kernel`, `elementwise`
//! - `conv/mod` → `conv/algo`, `conv/args`, `conv/shape`, `conv/op3x3`, `conv/general`,
//!   `conv/transposed`, `kernel`
//! - `detection/real` → none
//! - `detection/boxes` → `detection/real`
//! - `detection/nms` → `detection/boxes`, `detection/real`
//! - `detection/roi_align/sampling` → `detection/real`
//! - `detection/roi_align/cpu` → `detection/roi_align/sampling`, `detection/real`, `kernel`
//! - `detection/roi_align/mod` → `detection/roi_align/cpu`, `detection/roi_align/sampling`,
//!   `detection/boxes`, `detection/real`
//! - `detection/poolers` → `detection/roi_align/mod`, `detection/boxes`, `detection/real`
//! - `mod` (this file), `detection/mod` → their children, for re-exports only
//!
//! `detection/` is compiled with the `detection` feature only (a default one).
//!
// Without it, the links to its items lead to the crate's table of features.
#![cfg_attr(not(feature = "detection"), doc = "[`RoiAlign`]: crate#features")]
#![cfg_attr(
    not(feature = "detection"),
    doc = "[`MultiScaleRoiAlign`]: crate#features"
)]
#![cfg_attr(not(feature = "detection"), doc = "[`nms()`]: crate#features")]
#![cfg_attr(not(feature = "detection"), doc = "[`batched_nms`]: crate#features")]
#![cfg_attr(not(feature = "detection"), doc = "[`box_iou`]: crate#features")]

mod conv;
#[cfg(feature = "detection")]
mod detection;
mod elementwise;
// The shared unsafe core; its module doc states the invariants every `unsafe` block keeps.
#[allow(unsafe_code)]
mod kernel;
mod norm;
mod path;
mod pool;
mod resize;
// The run-time choice of instruction set; its module doc states the invariant of its `unsafe`.
#[allow(unsafe_code)]
pub(crate) mod simd;

pub use conv::{
    conv1x1, conv2d, conv3x3, conv3x3_concat, conv3x3_fused, conv_transpose2x2, cpu_conv_algo,
    set_cpu_conv_algo, takes_fast_path, CpuConvAlgo,
};
// `nms` names both the public function and the crate-visible module, whose host-side helpers
// Mask R-CNN's RPN calls (`crate::ops::nms::batched_nms_host`).
#[cfg(feature = "detection")]
#[cfg_attr(docsrs, doc(cfg(feature = "detection")))]
pub use detection::{
    batched_nms, box_area, box_convert, box_iou, check_boxes, clip_boxes_to_image, nms,
    remove_small_boxes, rois_from_boxes, BoxFormat, MultiScaleRoiAlign, RoiAlign,
};
pub use elementwise::{add_relu, bias_add, leaky_relu, relu};
pub use norm::{batch_norm_train, BatchNormOutput};
pub(crate) use path::cpu_kernels;
#[cfg(feature = "detection")]
pub(crate) use path::host_f64;
pub(crate) use path::host_tensor;
pub use path::{device_generic, set_device_generic};
pub use pool::{max_pool2d, max_pool2d_generic, upsample_nearest2d, upsample_nearest2d_generic};
pub use resize::{resize_bilinear, resize_bilinear_composed};
pub use simd::{set_simd_level, simd_level, supported_simd_levels, SimdLevel};
