//! Weights trained with other UNet++ implementations: name maps and configurations.
//!
//! - [`monai`]: MONAI's `BasicUNetPlusPlus` (2-D).
//! - [`nested_unet`]: the `NestedUNet` of pytorch-nested-unet.
//! - [`smp`]: segmentation_models_pytorch's `UnetPlusPlus` with ResNet encoders.
//!
//! Each source loads through the same checks as the crate's own files: a missing, extra or
//! mis-shaped tensor is an [`Error::Weights`](crate::Error::Weights) that names it.

pub mod monai;
pub mod nested_unet;
pub mod smp;
