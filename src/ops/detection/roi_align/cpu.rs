//! The CPU kernels of `RoiAlign`: forward and input gradient, each in two
//! memory layouts that give bit-identical results.
//!
//! torchvision reads the map plane by plane (`(N, C, H, W)`), which for many rois means a
//! cache miss for nearly every corner read. When the rois read the map many times over, the
//! kernels first transpose it to channels-last, so that each sample's four corners are four
//! contiguous channel vectors and the inner loop runs over channels. Each output element still
//! sees torchvision's operations in torchvision's order, so the layout changes no bit (for
//! finite maps: torchvision, like the plane-by-plane kernel, adds `0 · x[0]` for sample points
//! outside the map, which the channels-last kernel skips, so a NaN or infinity in the first
//! pixel would spread only through the former).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::sampling::{Geometry, Sample, Sampling};
use crate::ops::detection::real::Real;
use crate::ops::kernel::contiguous;

/// `(N, C, H, W)` of the feature map.
type Dims = (usize, usize, usize, usize);

/// The CPU forward op; rois are kept in `f64` (exact for `f32` values) and converted to the
/// input's precision inside the kernels.
pub(super) struct RoiAlignOp {
    cfg: Sampling,
    rois: Arc<Vec<[f64; 5]>>,
}

impl RoiAlignOp {
    pub(super) fn new(cfg: Sampling, rois: Arc<Vec<[f64; 5]>>) -> Self {
        RoiAlignOp { cfg, rois }
    }
}

fn rois_as<T: Real>(rois: &[[f64; 5]]) -> Vec<[T; 5]> {
    rois.iter().map(|r| r.map(T::from_f64)).collect()
}

/// Whether the rois read the map often enough to pay for a channels-last copy: at least a
/// quarter of a read per map element and channel.
fn channels_last_pays<T: Real>(rois: &[[T; 5]], dims: Dims, cfg: &Sampling) -> bool {
    let (n, _, h, w) = dims;
    let bins = cfg.output_size.0 * cfg.output_size.1;
    let reads: usize = rois
        .iter()
        .map(|r| {
            Geometry::new(r, cfg, cfg.output_size)
                .samples_per_bin()
                .saturating_mul(4 * bins)
        })
        .fold(0usize, usize::saturating_add);
    reads.saturating_mul(4) >= n * h * w
}

fn forward<T: Real>(x: &[T], dims: Dims, rois: &[[T; 5]], cfg: &Sampling) -> Vec<T> {
    if channels_last_pays(rois, dims, cfg) {
        forward_channels_last(x, dims, rois, cfg)
    } else {
        forward_planar(x, dims, rois, cfg)
    }
}

fn backward<T: Real>(grad: &[T], dims: Dims, rois: &[[T; 5]], cfg: &Sampling) -> Vec<T> {
    if channels_last_pays(rois, dims, cfg) {
        backward_channels_last(grad, dims, rois, cfg)
    } else {
        backward_planar(grad, dims, rois, cfg)
    }
}

/// torchvision's loop: per roi, per channel plane, per bin.
fn forward_planar<T: Real>(x: &[T], dims: Dims, rois: &[[T; 5]], cfg: &Sampling) -> Vec<T> {
    let (_, c, h, w) = dims;
    let out_size = cfg.output_size;
    let bins = out_size.0 * out_size.1;
    let mut out = vec![T::zero(); rois.len() * c * bins];
    out.par_chunks_mut(c * bins)
        .zip(rois.par_iter())
        .for_each_init(Vec::new, |table, (dst, roi)| {
            let g = Geometry::new(roi, cfg, out_size);
            g.fill_table(h, w, table);
            let per_bin = g.samples_per_bin();
            for ch in 0..c {
                let plane = &x[(g.batch * c + ch) * h * w..][..h * w];
                for bin in 0..bins {
                    let mut acc = T::zero();
                    for s in &table[bin * per_bin..(bin + 1) * per_bin] {
                        acc += s.w[0] * plane[s.pos[0]]
                            + s.w[1] * plane[s.pos[1]]
                            + s.w[2] * plane[s.pos[2]]
                            + s.w[3] * plane[s.pos[3]];
                    }
                    dst[ch * bins + bin] = acc / g.count;
                }
            }
        });
    out
}

/// `(N, C, H, W)` to `(N, H, W, C)`.
fn to_channels_last<T: Real>(x: &[T], dims: Dims) -> Vec<T> {
    let (_, c, h, w) = dims;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(w * c)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, y) = (row / h, row % h);
            for ch in 0..c {
                let src = &x[((img * c + ch) * h + y) * w..][..w];
                for (xx, &v) in src.iter().enumerate() {
                    dst[xx * c + ch] = v;
                }
            }
        });
    out
}

fn forward_channels_last<T: Real>(x: &[T], dims: Dims, rois: &[[T; 5]], cfg: &Sampling) -> Vec<T> {
    let (_, c, h, w) = dims;
    let xt = to_channels_last(x, dims);
    let out_size = cfg.output_size;
    let bins = out_size.0 * out_size.1;
    let mut out = vec![T::zero(); rois.len() * c * bins];
    out.par_chunks_mut(c * bins)
        .zip(rois.par_iter())
        .for_each_init(
            || (Vec::new(), vec![T::zero(); c]),
            |(table, acc), (dst, roi)| {
                let g = Geometry::new(roi, cfg, out_size);
                g.fill_table(h, w, table);
                let per_bin = g.samples_per_bin();
                let map = &xt[g.batch * h * w * c..][..h * w * c];
                for bin in 0..bins {
                    acc.fill(T::zero());
                    for s in table[bin * per_bin..(bin + 1) * per_bin]
                        .iter()
                        .filter(|s| s.inside)
                    {
                        let [p0, p1, p2, p3] = s.pos.map(|p| &map[p * c..][..c]);
                        let [w0, w1, w2, w3] = s.w;
                        for (i, a) in acc.iter_mut().enumerate() {
                            *a += w0 * p0[i] + w1 * p1[i] + w2 * p2[i] + w3 * p3[i];
                        }
                    }
                    for (ch, &a) in acc.iter().enumerate() {
                        dst[ch * bins + bin] = a / g.count;
                    }
                }
            },
        );
    out
}

/// Channel blocks of at most `ceil(C / threads)` channels: the unit of parallel work of the
/// backward kernels, so that every gradient element is summed by one task, in order.
fn channel_blocks(c: usize) -> Vec<std::ops::Range<usize>> {
    let width = c.div_ceil(rayon::current_num_threads().max(1)).max(1);
    (0..c)
        .step_by(width)
        .map(|s| s..(s + width).min(c))
        .collect()
}

/// Scatters one sample's share of the output gradient `gv` to its four corners.
#[inline]
fn scatter<T: Real>(gin: &mut [T], s: &Sample<T>, gv: T, count: T) {
    for corner in 0..4 {
        gin[s.pos[corner]] += gv * s.w[corner] / count;
    }
}

/// torchvision's loop per channel; tasks own whole channels, so each element receives its
/// contributions in torchvision's order (roi, bin, sample, corner).
fn backward_planar<T: Real>(grad: &[T], dims: Dims, rois: &[[T; 5]], cfg: &Sampling) -> Vec<T> {
    let (n, c, h, w) = dims;
    let out_size = cfg.output_size;
    let bins = out_size.0 * out_size.1;
    let ranges = channel_blocks(c);
    let blocks: Vec<Vec<T>> = ranges
        .par_iter()
        .map(|chans| {
            // This block's gradient as (channel, N, H, W).
            let mut gin = vec![T::zero(); chans.len() * n * h * w];
            let mut table = Vec::new();
            for (k, roi) in rois.iter().enumerate() {
                let g = Geometry::new(roi, cfg, out_size);
                g.fill_table(h, w, &mut table);
                let per_bin = g.samples_per_bin();
                for (cc, ch) in chans.clone().enumerate() {
                    let plane = &mut gin[(cc * n + g.batch) * h * w..][..h * w];
                    let gout = &grad[(k * c + ch) * bins..][..bins];
                    for (bin, &gv) in gout.iter().enumerate() {
                        for s in table[bin * per_bin..(bin + 1) * per_bin]
                            .iter()
                            .filter(|s| s.inside)
                        {
                            scatter(plane, s, gv, g.count);
                        }
                    }
                }
            }
            gin
        })
        .collect();
    assemble(&ranges, &blocks, dims, |blk, _, img, cc, p| {
        blk[(cc * n + img) * h * w + p]
    })
}

fn backward_channels_last<T: Real>(
    grad: &[T],
    dims: Dims,
    rois: &[[T; 5]],
    cfg: &Sampling,
) -> Vec<T> {
    let (n, c, h, w) = dims;
    let out_size = cfg.output_size;
    let bins = out_size.0 * out_size.1;
    let ranges = channel_blocks(c);
    let blocks: Vec<Vec<T>> = ranges
        .par_iter()
        .map(|chans| {
            let width = chans.len();
            // This block's gradient as (N, H, W, channel).
            let mut gin = vec![T::zero(); n * h * w * width];
            let mut gt = vec![T::zero(); bins * width];
            let mut table = Vec::new();
            for (k, roi) in rois.iter().enumerate() {
                let g = Geometry::new(roi, cfg, out_size);
                g.fill_table(h, w, &mut table);
                let per_bin = g.samples_per_bin();
                // This roi's output gradient as (bin, channel).
                for (cc, ch) in chans.clone().enumerate() {
                    for (bin, &v) in grad[(k * c + ch) * bins..][..bins].iter().enumerate() {
                        gt[bin * width + cc] = v;
                    }
                }
                let map = &mut gin[g.batch * h * w * width..][..h * w * width];
                for bin in 0..bins {
                    let gb = &gt[bin * width..][..width];
                    for s in table[bin * per_bin..(bin + 1) * per_bin]
                        .iter()
                        .filter(|s| s.inside)
                    {
                        for corner in 0..4 {
                            let wc = s.w[corner];
                            let dst = &mut map[s.pos[corner] * width..][..width];
                            for (d, &gv) in dst.iter_mut().zip(gb) {
                                *d += gv * wc / g.count;
                            }
                        }
                    }
                }
            }
            gin
        })
        .collect();
    assemble(&ranges, &blocks, dims, |blk, width, img, cc, p| {
        blk[(img * h * w + p) * width + cc]
    })
}

/// Gathers the blocks' gradients into `(N, C, H, W)`; `at(block, width, image, channel in
/// block, pixel)` reads one element of a block in its own layout.
fn assemble<T: Real>(
    ranges: &[std::ops::Range<usize>],
    blocks: &[Vec<T>],
    dims: Dims,
    at: impl Fn(&[T], usize, usize, usize, usize) -> T + Sync,
) -> Vec<T> {
    let (n, c, h, w) = dims;
    let block_width = ranges.first().map_or(1, |r| r.len().max(1));
    let mut out = vec![T::zero(); n * c * h * w];
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dst)| {
            let (img, ch) = (plane / c, plane % c);
            let b = ch / block_width;
            let width = ranges[b].len();
            let cc = ch - ranges[b].start;
            for (p, d) in dst.iter_mut().enumerate() {
                *d = at(&blocks[b], width, img, cc, p);
            }
        });
    out
}

impl CustomOp1 for RoiAlignOp {
    fn name(&self) -> &'static str {
        "unetpp-roi-align"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims4()?;
        let (oh, ow) = self.cfg.output_size;
        let shape = Shape::from((self.rois.len(), dims.1, oh, ow));
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(forward(
                contiguous::<f32>(storage, layout)?,
                dims,
                &rois_as::<f32>(&self.rois),
                &self.cfg,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(forward(
                contiguous::<f64>(storage, layout)?,
                dims,
                &rois_as::<f64>(&self.rois),
                &self.cfg,
            )),
            s => candle_core::bail!("roi_align: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = RoiAlignBackward {
            cfg: self.cfg,
            rois: self.rois.clone(),
            input: arg.dims4()?,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

/// The gradient of [`RoiAlignOp`] with respect to its input.
struct RoiAlignBackward {
    cfg: Sampling,
    rois: Arc<Vec<[f64; 5]>>,
    input: Dims,
}

impl CustomOp1 for RoiAlignBackward {
    fn name(&self) -> &'static str {
        "unetpp-roi-align-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let shape = Shape::from(self.input);
        let out = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(backward(
                contiguous::<f32>(storage, layout)?,
                self.input,
                &rois_as::<f32>(&self.rois),
                &self.cfg,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(backward(
                contiguous::<f64>(storage, layout)?,
                self.input,
                &rois_as::<f64>(&self.rois),
                &self.cfg,
            )),
            s => candle_core::bail!("roi_align backward: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn case(seed: u64) -> (Vec<f32>, Dims, Vec<[f32; 5]>, Sampling) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dims = (2, 5, 9, 11);
        let x = (0..dims.0 * dims.1 * dims.2 * dims.3)
            .map(|_| rng.random::<f32>() - 0.5)
            .collect();
        let rois = (0..13)
            .map(|_| {
                let (x1, y1) = (
                    rng.random::<f32>() * 14.0 - 2.0,
                    rng.random::<f32>() * 12.0 - 2.0,
                );
                let (bw, bh) = (rng.random::<f32>() * 8.0, rng.random::<f32>() * 8.0);
                [
                    (rng.random::<f32>() * 2.0).floor(),
                    x1,
                    y1,
                    x1 + bw,
                    y1 + bh,
                ]
            })
            .collect();
        let cfg = Sampling {
            output_size: (3, 2),
            spatial_scale: 1.0,
            sampling_ratio: if seed.is_multiple_of(2) { -1 } else { 2 },
            aligned: seed.is_multiple_of(3),
        };
        (x, dims, rois, cfg)
    }

    #[test]
    fn both_layouts_give_identical_bits() {
        for seed in 0..6 {
            let (x, dims, rois, cfg) = case(seed);
            let a = forward_planar(&x, dims, &rois, &cfg);
            let b = forward_channels_last(&x, dims, &rois, &cfg);
            assert_eq!(a, b, "forward, seed {seed}");
            let g: Vec<f32> = (0..a.len()).map(|i| ((i * 37) % 17) as f32 - 8.0).collect();
            let a = backward_planar(&g, dims, &rois, &cfg);
            let b = backward_channels_last(&g, dims, &rois, &cfg);
            assert_eq!(a, b, "backward, seed {seed}");
        }
    }

    #[test]
    fn channel_blocks_cover_every_channel_once() {
        for c in [1, 2, 3, 7, 256] {
            let r = channel_blocks(c);
            assert_eq!(r.first().map(|r| r.start), Some(0));
            assert_eq!(r.last().map(|r| r.end), Some(c));
            assert!(r.windows(2).all(|p| p[0].end == p[1].start));
        }
    }
}
