//! Encoders shared by the segmentation and detection models: ResNet-18/34/50 in torchvision's
//! layout and weight names.

pub(crate) mod resnet;

pub use resnet::{ResNet, ResNetConfig, ResNetConfigBuilder, ResNetDepth};
