//! Per-layer timings of the 3×3 convolutions in the paper's UNet++ (and of the other ops of a
//! node): Winograd, banded GEMM, and candle's stock `conv2d`.
//!
//! ```text
//! cargo run --release --example bench_conv [-- --runs 5 --backward]
//! ```
//!
//! `--backward` times a forward and backward pass (gradients of input, kernel and bias)
//! instead of a forward pass; its GFLOP/s count the three convolutions.

use candle_core::{Device, Tensor};
use clap::Parser;
use unetpp::ops::{set_cpu_conv_algo, CpuConvAlgo};
use unetpp::prelude::*;

#[path = "support/mod.rs"]
mod support;
use support::median_seconds;

/// Per-layer timings of the 3×3 convolutions in the paper's UNet++: Winograd, banded GEMM and
/// candle's stock `conv2d`, and of the other ops of a node.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Timed runs after one warm-up
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Time a forward and backward pass instead of a forward pass
    #[arg(long)]
    backward: bool,
}

fn main() -> Result<()> {
    let Args { runs, backward } = Args::parse();
    let dev = Device::Cpu;
    let what = if backward {
        "forward + backward"
    } else {
        "forward"
    };
    println!("3x3 conv, stride 1, pad 1, batch 1, f32, {what}: median of {runs} runs");
    println!(
        "   C ->   O     HxW      GFLOP  winograd s GFLOP/s    gemm s  GFLOP/s   stock s  GFLOP/s"
    );
    for (c, o, hw) in [
        (1, 32, 256),
        (32, 32, 256),
        (64, 32, 256),
        (160, 32, 256),
        (64, 64, 128),
        (192, 64, 128),
        (128, 128, 64),
        (256, 256, 32),
        (512, 256, 32),
        (512, 512, 16),
    ] {
        let x = Tensor::randn(0f32, 1., (1, c, hw, hw), &dev)?;
        let w = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (o, c, 3, 3), &dev)?)?;
        let b = candle_core::Var::from_tensor(&Tensor::zeros(o, candle_core::DType::F32, &dev)?)?;
        let passes = if backward { 3.0 } else { 1.0 };
        let gflop = passes * 2.0 * 9.0 * (c * o * hw * hw) as f64 / 1e9;
        let x = if backward {
            candle_core::Var::from_tensor(&x)?.as_tensor().clone()
        } else {
            x
        };
        let run = || -> Result<()> {
            let y = unetpp::ops::conv3x3(&x, w.as_tensor(), Some(b.as_tensor()))?;
            if backward {
                y.sum_all()?.backward()?;
            }
            Ok(())
        };
        let mut times = Vec::new();
        for algo in [CpuConvAlgo::Winograd, CpuConvAlgo::Gemm, CpuConvAlgo::Stock] {
            set_cpu_conv_algo(algo);
            times.push(median_seconds(run, runs)?);
        }
        set_cpu_conv_algo(CpuConvAlgo::Winograd);
        println!(
            "{c:4} -> {o:3}  {hw:4}x{hw:<4}  {gflop:6.2}  {:9.4}  {:7.1}  {:8.4}  {:7.1}  {:8.4}  {:7.1}",
            times[0],
            gflop / times[0],
            times[1],
            gflop / times[1],
            times[2],
            gflop / times[2]
        );
    }
    let x = Tensor::randn(0f32, 1., (1, 64, 128, 128), &dev)?;
    let y = Tensor::randn(0f32, 1., (1, 32, 256, 256), &dev)?;
    let wt = Tensor::randn(0f32, 1., (64, 32, 2, 2), &dev)?;
    println!("\nother ops of a node:");
    let t = median_seconds(
        || {
            x.conv_transpose2d(&wt, 0, 0, 2, 1)
                .map(|_| ())
                .map_err(Error::from)
        },
        runs,
    )?;
    println!("  conv_transpose2d 2x2 s2 64->32 128->256   {t:.4} s");
    let t = median_seconds(|| unetpp::ops::max_pool2d(&y, 2, 2, 0).map(|_| ()), runs)?;
    println!("  max_pool2d 32x256x256 (unetpp)            {t:.4} s");
    let t = median_seconds(|| y.max_pool2d(2).map(|_| ()).map_err(Error::from), runs)?;
    println!("  max_pool2d 32x256x256 (candle)            {t:.4} s");
    let t = median_seconds(|| y.relu().map(|_| ()).map_err(Error::from), runs)?;
    println!("  relu 32x256x256                           {t:.4} s");
    let parts = [y.clone(), y.clone(), y.clone(), y.clone(), y.clone()];
    let t = median_seconds(
        || Tensor::cat(&parts, 1).map(|_| ()).map_err(Error::from),
        runs,
    )?;
    println!("  cat 5 x 32x256x256                        {t:.4} s");
    let b = Tensor::randn(0f32, 1., (1, 32, 1, 1), &dev)?;
    let t = median_seconds(
        || y.broadcast_add(&b).map(|_| ()).map_err(Error::from),
        runs,
    )?;
    println!("  bias broadcast_add 32x256x256             {t:.4} s");
    Ok(())
}
