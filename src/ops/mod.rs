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
//! # Ok::<(), unetpp::Error>(())
//! ```

mod conv;
mod detection;
mod elementwise;
// The shared unsafe core; its module doc states the invariants every `unsafe` block keeps.
#[allow(unsafe_code)]
mod kernel;
mod norm;
mod pool;
mod resize;

pub use conv::{
    conv1x1, conv2d, conv3x3, conv3x3_concat, conv3x3_fused, conv_transpose2x2, cpu_conv_algo,
    set_cpu_conv_algo, takes_fast_path, CpuConvAlgo,
};
pub use detection::{
    batched_nms, box_area, box_convert, box_iou, check_boxes, clip_boxes_to_image, nms,
    remove_small_boxes, rois_from_boxes, BoxFormat, MultiScaleRoiAlign, RoiAlign,
};
pub use elementwise::{add_relu, bias_add};
pub use norm::{batch_norm_train, BatchNormOutput};
pub use pool::{max_pool2d, max_pool2d_generic, upsample_nearest2d, upsample_nearest2d_generic};
pub use resize::{resize_bilinear, resize_bilinear_composed};
