//! The nested feature pyramid of Mask R-CNN++: FPN's top-down pathway redesigned with
//! UNet++'s nested dense skip connections (see `docs/maskrcnn.md`).
//!
//! The pyramid levels are the rows `i = 0..L` of the UNet++ grid of depth `L` (3 for C2–C5).
//! `X^{i,0}` is the lateral 1×1 projection of backbone map `C_{i+2}`, as in FPN. Every other
//! node fuses the dense skips of its level with the up-sampled node below:
//! `X^{i,j} = ReLU(W^{i,j} ∗ [X^{i,0}, …, X^{i,j-1}, U(X^{i+1,j-1})])` with a 1×1 convolution
//! `W^{i,j}` to the pyramid width (U: nearest-neighbour, as FPN up-samples). The output of
//! level `i` is FPN's 3×3 convolution of the last node of its row, `X^{i,L-i}`, and the extra
//! level is sub-sampled from the coarsest output, as in FPN. FPN itself is the same walk over
//! the plain grid (`X^{i,L-i}` reads only `X^{i,0}` and `U(X^{i+1,L-i-1})`) with the fusion
//! fixed to a sum: the nested pyramid replaces that one sum per level by learned fusions of
//! every earlier node of the level.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::conv::{conv, kaiming_uniform_a1};
use super::fpn::{last_level_max_pool, LevelConvs};
use super::resample::resize_nearest;
use crate::nested::{ConcatOrder, Grid, Input, Node};
use crate::nn::{Conv, NamedTensor};
use crate::{weights, Error, Result};

/// The nested pyramid over backbone maps with `in_channels` channels (finest first).
///
/// Weight names: `inner_blocks.{i}.0.*` (laterals) and `layer_blocks.{i}.0.*` (outputs) as in
/// torchvision's FPN (whose pre-0.13 names load too), so an FPN's weights can initialise them,
/// and `nested.x_{i}_{j}.*` for the fusion convolutions.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use unetpp::maskrcnn::NestedFpn;
///
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let fpn = NestedFpn::new(&[8, 16, 32, 64], 16, vb)?;
/// let maps: Vec<Tensor> = [(8, 16), (16, 8), (32, 4), (64, 2)].iter()
///     .map(|&(c, s)| Tensor::zeros((1, c, s, s), DType::F32, &Device::Cpu))
///     .collect::<candle_core::Result<_>>()?;
/// let out = fpn.forward(&maps)?;
/// assert_eq!(out.len(), 5);
/// assert_eq!(out[0].dims(), &[1, 16, 16, 16]);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NestedFpn {
    grid: Grid,
    convs: LevelConvs,
    fuse: Vec<(Node, Conv)>,
    out_channels: usize,
    tensors: Vec<NamedTensor>,
}

impl NestedFpn {
    /// A nested pyramid over maps with `in_channels` channels (finest first) to
    /// `out_channels`; at least two levels.
    pub fn new(in_channels: &[usize], out_channels: usize, vb: VarBuilder) -> Result<Self> {
        if in_channels.len() < 2 || in_channels.contains(&0) || out_channels == 0 {
            return Err(Error::config(
                "nested_fpn",
                format!(
                    "needs at least two levels of non-zero channels, got {in_channels:?} -> {out_channels}"
                ),
            ));
        }
        let grid = Grid::new(in_channels.len() - 1);
        let ((convs, fuse), tensors) =
            weights::record(vb, |vb| Self::layers(&grid, in_channels, out_channels, &vb))?;
        Ok(NestedFpn {
            grid,
            convs,
            fuse,
            out_channels,
            tensors,
        })
    }

    #[allow(clippy::type_complexity)]
    fn layers(
        grid: &Grid,
        in_channels: &[usize],
        out_channels: usize,
        vb: &VarBuilder,
    ) -> Result<(LevelConvs, Vec<(Node, Conv)>)> {
        let convs = LevelConvs::new(in_channels, out_channels, vb)?;
        let mut fuse = Vec::new();
        for &node in grid.nodes().iter().filter(|n| n.col > 0) {
            let c_in = out_channels * grid.inputs(node, ConcatOrder::SkipsFirst).len();
            let fusion = conv(
                c_in,
                out_channels,
                1,
                kaiming_uniform_a1(c_in),
                vb.pp("nested").pp(node.name()),
            )?;
            fuse.push((node, fusion));
        }
        Ok((convs, fuse))
    }

    /// The channels of every output level.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The grid of nodes (depth = levels − 1).
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// The pyramid of `features` (finest first): one map per input at its resolution, then the
    /// extra level at half the coarsest one's resolution.
    pub fn forward(&self, features: &[Tensor]) -> Result<Vec<Tensor>> {
        if features.len() != self.convs.inner.len() {
            return Err(Error::Shape(format!(
                "the nested FPN has {} levels, got {} feature maps",
                self.convs.inner.len(),
                features.len()
            )));
        }
        let mut out: HashMap<Node, Tensor> = HashMap::new();
        let mut fuse = self.fuse.iter();
        for &node in self.grid.nodes() {
            let i = node.level;
            if node.col == 0 {
                out.insert(node, self.convs.inner[i].forward(&features[i])?);
                continue;
            }
            let (_, conv) = fuse
                .next()
                .ok_or_else(|| Error::Shape(format!("no fusion weights for {node}")))?;
            let (_, _, h, w) = features[i].dims4()?;
            let mut parts = Vec::new();
            for input in self.grid.inputs(node, ConcatOrder::SkipsFirst) {
                let t = match input {
                    Input::Skip(n) => out.get(&n).cloned(),
                    Input::Upsampled(n) => {
                        out.get(&n).map(|t| resize_nearest(t, h, w)).transpose()?
                    }
                    Input::Image | Input::Pooled(_) => None,
                };
                parts.push(t.ok_or_else(|| Error::Shape(format!("{node} reads a missing input")))?);
            }
            out.insert(node, conv.forward_fused(&Tensor::cat(&parts, 1)?, true)?);
        }
        let depth = self.grid.depth();
        let mut levels = Vec::with_capacity(depth + 2);
        for (i, conv) in self.convs.layer.iter().enumerate() {
            let last = out
                .get(&Node::new(i, depth - i))
                .ok_or_else(|| Error::Shape(format!("no output node for level {i}")))?;
            levels.push(conv.forward(last)?);
        }
        let pool = last_level_max_pool(&levels[depth])?;
        levels.push(pool);
        Ok(levels)
    }

    /// Every tensor under its name (`inner_blocks.*`, `layer_blocks.*` as in the FPN, and
    /// `nested.x_{i}_{j}.*`).
    pub fn named_tensors(&self) -> Vec<NamedTensor> {
        self.tensors.clone()
    }
}
