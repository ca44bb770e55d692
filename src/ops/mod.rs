//! Operations candle lacks or runs slowly, each with a forward and a backward pass.

mod bilinear;
mod boxes;
mod channels;
mod conv;
mod cpu;
mod nms;
mod poolers;
mod real;
mod roi_align;
mod roi_align_cpu;
mod transposed;
mod winograd;
mod winograd_wgrad;

pub use bilinear::{resize_bilinear, resize_bilinear_composed};
pub use boxes::{
    box_area, box_convert, box_iou, check_boxes, clip_boxes_to_image, remove_small_boxes, BoxFormat,
};
pub use channels::bias_add;
pub use conv::{
    conv1x1, conv3x3, conv3x3_concat, conv3x3_fused, conv_transpose2x2, cpu_conv_algo,
    fast_cpu_conv, set_cpu_conv_algo, set_fast_cpu_conv, takes_fast_path, CpuConvAlgo,
};
pub use nms::{batched_nms, nms};
pub use poolers::MultiScaleRoiAlign;
pub use roi_align::{rois_from_boxes, RoiAlign};
