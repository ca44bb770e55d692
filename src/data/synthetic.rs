//! Seeded synthetic segmentation tasks.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::Batch;
use crate::{Error, Result};

/// `n` grey images of `h × w` pixels holding one to three filled circles and squares of
/// widely varying size (radius or half-side from 2 pixels to a quarter of the shorter side),
/// possibly touching or overlapping, with bell-shaped noise of standard deviation 0.35 on a
/// contrast of 0.5, so that single pixels are ambiguous and context decides. The same `seed` gives the same batch.
///
/// ```
/// let b = unetpp::data::synthetic::circles_and_squares(4, 32, 32, 7, &candle_core::Device::Cpu).unwrap();
/// assert_eq!(b.images.dims(), &[4, 1, 32, 32]);
/// ```
pub fn circles_and_squares(
    n: usize,
    h: usize,
    w: usize,
    seed: u64,
    device: &Device,
) -> Result<Batch> {
    if n == 0 || h < 8 || w < 8 {
        return Err(Error::Shape(format!(
            "need at least one image of at least 8x8 pixels, got {n} of {h}x{w}"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut images = vec![0f32; n * h * w];
    let mut masks = vec![0f32; n * h * w];
    let max_r = (h.min(w) / 4).max(3) as f32;
    for b in 0..n {
        let mask = &mut masks[b * h * w..(b + 1) * h * w];
        for _ in 0..rng.random_range(1..=3) {
            let r = rng.random_range(2.0..max_r);
            let cy = rng.random_range(0.0..h as f32);
            let cx = rng.random_range(0.0..w as f32);
            let square = rng.random_bool(0.5);
            for y in 0..h {
                for x in 0..w {
                    let (dy, dx) = (y as f32 + 0.5 - cy, x as f32 + 0.5 - cx);
                    let inside = if square {
                        dy.abs() <= r && dx.abs() <= r
                    } else {
                        dy * dy + dx * dx <= r * r
                    };
                    if inside {
                        mask[y * w + x] = 1.0;
                    }
                }
            }
        }
        let img = &mut images[b * h * w..(b + 1) * h * w];
        for (p, m) in img.iter_mut().zip(mask.iter()) {
            // Sum of three uniforms (standard deviation 0.5), scaled to 0.35.
            let noise: f32 = (0..3).map(|_| rng.random_range(-0.5f32..0.5)).sum::<f32>() * 0.7;
            *p = 0.25 + 0.5 * m + noise;
        }
    }
    let labels: Vec<u32> = masks.iter().map(|&m| m as u32).collect();
    Ok(Batch {
        images: Tensor::from_vec(images, (n, 1, h, w), device)?,
        masks: Tensor::from_vec(masks, (n, 1, h, w), device)?,
        labels: Tensor::from_vec(labels, (n, h, w), device)?,
    })
}
