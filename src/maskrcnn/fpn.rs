//! The feature pyramid network (Lin et al., 2017) as torchvision builds it for Mask R-CNN:
//! lateral 1×1 convolutions, a top-down pathway of nearest-neighbour up-sampling and sums,
//! 3×3 output convolutions, and an extra level sub-sampled from the coarsest output
//! (`LastLevelMaxPool`, named `"pool"` in torchvision).

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::{conv, kaiming_uniform_a1};
use super::resample::resize_nearest;
use crate::nn::{Conv, NamedTensor};
use crate::{weights, Error, Result};

/// A feature pyramid over backbone maps with `in_channels` channels (finest first), each level
/// projected to `out_channels`.
///
/// Weights are read under torchvision's names, `inner_blocks.{i}.0.{weight,bias}` (lateral)
/// and `layer_blocks.{i}.0.*` (output); checkpoints written before torchvision 0.13
/// (`inner_blocks.{i}.weight`, ...) load through [`super::current_names`].
#[derive(Debug, Clone)]
pub struct Fpn {
    convs: LevelConvs,
    out_channels: usize,
    tensors: Vec<NamedTensor>,
}

/// FPN's lateral 1×1 convolution (`inner_blocks.{i}`) and output 3×3 convolution
/// (`layer_blocks.{i}`) of every level; the nested pyramid has the same ones.
#[derive(Debug, Clone)]
pub(super) struct LevelConvs {
    pub(super) inner: Vec<Conv>,
    pub(super) layer: Vec<Conv>,
}

impl LevelConvs {
    pub(super) fn new(in_channels: &[usize], out_channels: usize, vb: &VarBuilder) -> Result<Self> {
        let mut inner = Vec::with_capacity(in_channels.len());
        let mut layer = Vec::with_capacity(in_channels.len());
        for (i, &c) in in_channels.iter().enumerate() {
            inner.push(conv(
                c,
                out_channels,
                1,
                kaiming_uniform_a1(c),
                block_vb(vb, "inner_blocks", i),
            )?);
            layer.push(conv(
                out_channels,
                out_channels,
                3,
                kaiming_uniform_a1(9 * out_channels),
                block_vb(vb, "layer_blocks", i),
            )?);
        }
        Ok(LevelConvs { inner, layer })
    }
}

/// The variable builder of block `i` of `group` (`{group}.{i}.0`).
fn block_vb<'a>(vb: &VarBuilder<'a>, group: &str, i: usize) -> VarBuilder<'a> {
    vb.pp(group).pp(i.to_string()).pp("0")
}

impl Fpn {
    /// A pyramid over maps with `in_channels` channels (finest first) to `out_channels`.
    pub fn new(in_channels: &[usize], out_channels: usize, vb: VarBuilder) -> Result<Self> {
        if in_channels.is_empty() || in_channels.contains(&0) || out_channels == 0 {
            return Err(Error::config(
                "fpn",
                format!("needs non-zero channels, got {in_channels:?} -> {out_channels}"),
            ));
        }
        let (convs, tensors) =
            weights::record(vb, |vb| LevelConvs::new(in_channels, out_channels, &vb))?;
        Ok(Fpn {
            convs,
            out_channels,
            tensors,
        })
    }

    /// The channels of every output level.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The pyramid of `features` (finest first): one map per input at its resolution, then the
    /// extra level at half the coarsest one's resolution.
    pub fn forward(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        if features.len() != self.convs.inner.len() {
            return Err(Error::Shape(format!(
                "the FPN has {} levels, got {} feature maps",
                self.convs.inner.len(),
                features.len()
            )));
        }
        let last = features.len() - 1;
        let mut top = self.convs.inner[last].forward(&features[last])?;
        let mut out = vec![self.convs.layer[last].forward(&top)?];
        for i in (0..last).rev() {
            let lateral = self.convs.inner[i].forward(&features[i])?;
            let (_, _, h, w) = lateral.dims4()?;
            top = (lateral + resize_nearest(&top, h, w)?)?;
            out.push(self.convs.layer[i].forward(&top)?);
        }
        out.reverse();
        let pool = last_level_max_pool(&out[last])?;
        out.push(pool);
        Ok(out)
    }

    /// Every tensor under torchvision's names.
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }
}

/// The extra level of the pyramid, torchvision's `LastLevelMaxPool`: every second row and
/// column of `x` from the first (`max_pool2d(kernel 1, stride 2)`), as gathers.
pub(super) fn last_level_max_pool(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let dev = x.device();
    let ih: Vec<u32> = (0..h).step_by(2).map(|i| i as u32).collect();
    let iw: Vec<u32> = (0..w).step_by(2).map(|i| i as u32).collect();
    let (nh, nw) = (ih.len(), iw.len());
    let y = x.index_select(&Tensor::from_vec(ih, nh, dev)?, 2)?;
    Ok(y.index_select(&Tensor::from_vec(iw, nw, dev)?, 3)?)
}
