//! The 3×3 convolution as its kernels see it: its dimensions and its input planes.

/// Dimensions of a 3×3 convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct Dims {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
}

/// The input planes of a convolution: one contiguous `(N, C_k, H, W)` buffer per part, their
/// channels concatenated in order. An ordinary input is a single part; the dense skips of a
/// UNet++ node can be read where they lie instead of being concatenated first.
pub(super) struct Planes<'a> {
    parts: Vec<(&'a [f32], usize)>,
    hw: usize,
}

impl<'a> Planes<'a> {
    /// `parts`, each a contiguous `(N, C_k, H, W)` buffer and its `C_k`, with `hw = H·W`.
    pub(super) fn new(parts: Vec<(&'a [f32], usize)>, hw: usize) -> Self {
        Self { parts, hw }
    }

    /// One `(N, C, H, W)` buffer with `hw = H·W`.
    pub(super) fn single(x: &'a [f32], c: usize, hw: usize) -> Self {
        Self {
            parts: vec![(x, c)],
            hw,
        }
    }

    /// The channel planes of image `img`, in order.
    pub(super) fn image(&self, img: usize) -> impl Iterator<Item = &'a [f32]> + '_ {
        let hw = self.hw;
        self.parts.iter().flat_map(move |&(data, ch)| {
            data[img * ch * hw..(img + 1) * ch * hw].chunks_exact(hw.max(1))
        })
    }
}
