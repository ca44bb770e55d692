//! Detection ops as torchvision computes them: boxes, non-maximum suppression, RoIAlign and
//! the multi-scale poolers of a feature pyramid.

mod boxes;
pub(crate) mod nms;
mod poolers;
mod real;
mod roi_align;

pub use boxes::{
    box_area, box_convert, box_iou, check_boxes, clip_boxes_to_image, remove_small_boxes, BoxFormat,
};
pub use nms::{batched_nms, nms};
pub use poolers::MultiScaleRoiAlign;
pub use roi_align::{rois_from_boxes, RoiAlign};
