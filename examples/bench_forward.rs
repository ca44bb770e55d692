//! Median forward time of the paper's UNet++ pruned to L1–L4 (inference, no graph recorded),
//! and optionally of a training step and the peak memory of one inference.
//!
//! ```text
//! cargo run --release --example bench_forward -- [--size 256] [--batch 1] [--in-channels 1]
//!     [--runs 5] [--train] [--no-forward] [--stock] [--memory]
//! ```
//!
//! Prints, for each level, the median seconds of a forward pass over `--runs` runs (after one
//! warm-up), the FLOPs of the pass (counted from the grid: multiply-adds ×2 of the
//! convolutions) and the throughput. `--train` adds the median time of one training step of
//! the full network (four heads, deep-supervision BCE + Dice, unetpp's AdamW), with its forward,
//! backward and optimizer phases; `--no-forward` skips the
//! forward table. `--stock` runs candle's own convolutions instead of ours. `--memory` runs one
//! L4 inference and prints the process's peak resident memory (Linux). `scripts/bench_pytorch.py`
//! takes the same flags; `scripts/bench_compare.sh` runs both and `docs/PERFORMANCE.md` has
//! the results.

use candle_core::{DType, Tensor};
use std::time::Instant;

use candle_nn::{ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use unetpp::prelude::*;
use unetpp::train::AdamW;

#[path = "support/mod.rs"]
mod support;
use support::median_seconds;
use unetpp::nested::Node;

/// Median forward time of the paper's UNet++ pruned to L1–L4, optionally of a training step
/// and the peak memory of one inference.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Side of the square input
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Images per pass
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Channels of the input
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    /// Timed runs after one warm-up (at least 1)
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also time a training step of the full network (4 heads, BCE + Dice, AdamW)
    #[arg(long)]
    train: bool,
    /// Skip the forward table
    #[arg(long)]
    no_forward: bool,
    /// Run candle's own convolutions instead of ours
    #[arg(long)]
    stock: bool,
    /// Only print the peak resident memory of one L4 inference (Linux)
    #[arg(long)]
    memory: bool,
    /// Call `unetpp::device::keep_freed_memory` first (glibc keeps freed memory for reuse)
    #[arg(long)]
    keep_freed_memory: bool,
    /// Only print the SIMD levels: those this CPU supports, the one the hand-written kernels
    /// take, and the `gemm` crate's
    #[arg(long)]
    levels: bool,
    /// Passed by `cargo bench` to the bench target that includes this file
    #[arg(long = "bench", hide = true)]
    _bench: bool,
}

/// FLOPs (2 × multiply-adds) of a forward pass of `net` on `batch` images of `size²`.
fn forward_flops(net: &UNetPlusPlus, batch: usize, size: usize) -> f64 {
    let cfg = net.config();
    let f = cfg.widths();
    let grid = net.grid();
    let mut macs = 0f64;
    for &node in grid.nodes() {
        let Node { level: i, col: j } = node;
        let hw = ((size >> i) * (size >> i)) as f64;
        let c_in = grid
            .in_channels(node, f, cfg.in_channels(), cfg.upsample().keeps_channels())
            .unwrap_or(0) as f64;
        let c = f[i] as f64;
        macs += 9.0 * (c_in * c + c * c) * hw;
        if j > 0 && !cfg.upsample().keeps_channels() {
            macs += 4.0 * f[i + 1] as f64 * c * (hw / 4.0);
        }
    }
    macs += (f[0] * cfg.num_classes() * size * size * net.head_cols().len()) as f64;
    2.0 * macs * batch as f64
}

/// The instruction set the `gemm` crate's f32 kernels take: it checks for AVX-512F, then FMA
/// (with AVX2), at run time, whatever `UNETPP_SIMD` says.
fn gemm_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("fma") {
            return "avx2 + fma";
        }
    }
    "portable"
}

/// Peak resident set size of this process in MiB (Linux), if it can be read.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn main() -> Result<()> {
    let mut args = Args::parse();
    args.runs = args.runs.max(1);
    if args.levels {
        let supported: Vec<&str> = unetpp::ops::supported_simd_levels()
            .iter()
            .map(|l| l.name())
            .collect();
        println!("supported levels: {}", supported.join(","));
        println!(
            "hand-written kernels (Winograd and weight-gradient transforms, batch norm, ReLU, \
             bias, transposed and strided convolutions): {}",
            unetpp::ops::simd_level()
        );
        println!("gemm crate's matrix kernels: {}", gemm_level());
        return Ok(());
    }
    if args.stock {
        unetpp::ops::set_cpu_conv_algo(unetpp::ops::CpuConvAlgo::Stock);
    }
    let kept = args.keep_freed_memory && unetpp::device::keep_freed_memory(usize::MAX);
    if args.keep_freed_memory && !kept {
        eprintln!("keep_freed_memory: not applied (the allocator is not glibc)");
    }
    let device = unetpp::device::best_device(0)?;
    let cfg = UNetPlusPlusConfig::paper()
        .in_channels(args.in_channels)
        .build()?;
    let (b, c, s) = (args.batch, args.in_channels, args.size);
    let x = Tensor::randn(0f32, 1., (b, c, s, s), &device)?;
    let kernels = if args.stock {
        "candle's stock convolutions"
    } else {
        "unetpp convolutions"
    };
    println!(
        "UNet++ paper configuration, input {b}x{c}x{s}x{s}, f32, {device:?}, {kernels}, {} thread(s), \
         SIMD level {}{}",
        rayon::current_num_threads(),
        unetpp::ops::simd_level(),
        if kept { ", freed memory kept" } else { "" }
    );
    if args.memory {
        let net =
            UNetPlusPlus::new_pruned(&cfg, Level::L4, VarBuilder::zeros(DType::F32, &device))?;
        let before = peak_rss_mib().unwrap_or(f64::NAN);
        net.forward(&x)?;
        let after = peak_rss_mib().unwrap_or(f64::NAN);
        println!("peak RSS: {after:.0} MiB after one L4 inference ({before:.0} MiB before it)");
        return Ok(());
    }
    let varmap = VarMap::new();
    let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    if !args.no_forward {
        println!("median of {} runs", args.runs);
        println!("level  parameters   GFLOP  median s  GFLOP/s");
        let inference = net.detach()?;
        for k in 1..=cfg.depth() {
            let pruned = inference.prune(k)?;
            let t = median_seconds(|| pruned.forward(&x).map(|_| ()), args.runs)?;
            let gflop = forward_flops(&pruned, b, s) / 1e9;
            println!(
                "L{k}     {:>10}  {gflop:6.1}  {t:8.3}  {:7.1}",
                pruned.num_parameters(),
                gflop / t
            );
        }
    }
    if args.train {
        let target = x.narrow(1, 0, 1)?.gt(0.0)?.to_dtype(DType::F32)?;
        let mut opt = AdamW::new(&varmap, ParamsAdamW::default())?;
        // One warm-up step, then each phase timed separately within each step.
        let mut phases: [Vec<f64>; 4] = Default::default();
        for run in 0..=args.runs.max(1) {
            let t0 = Instant::now();
            let out = net.forward_heads(&x, true)?;
            let loss = unetpp::loss::deep_supervision_bce_dice(out.logits(), &target)?;
            let t1 = Instant::now();
            let grads = loss.backward()?;
            let t2 = Instant::now();
            opt.step(&grads)?;
            let t3 = Instant::now();
            drop((grads, loss, out));
            if run > 0 {
                let times = [t1 - t0, t2 - t1, t3 - t2, t3 - t0];
                for (phase, t) in phases.iter_mut().zip(times) {
                    phase.push(t.as_secs_f64());
                }
            }
        }
        let [fwd, bwd, step, total] = phases.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        });
        println!(
            "training step (L4, 4 heads, AdamW, batch {b}): median of {} runs {total:.3} s \
             (forward + loss {fwd:.3} s, backward {bwd:.3} s, optimizer {step:.3} s)",
            args.runs
        );
    }
    Ok(())
}
