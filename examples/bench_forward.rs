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
//! the full network (four heads, deep-supervision BCE + Dice, AdamW); `--no-forward` skips the
//! forward table. `--stock` runs candle's own convolutions instead of ours. `--memory` runs one
//! L4 inference and prints the process's peak resident memory (Linux). `scripts/bench_pytorch.py`
//! takes the same flags; `scripts/bench_compare.sh` runs both and `docs/PERFORMANCE.md` has
//! the results.

use candle_core::{DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use unetpp::prelude::*;

#[path = "support/mod.rs"]
mod support;
use support::median_seconds;
use unetpp::unetpp::Node;

struct Args {
    size: usize,
    batch: usize,
    in_channels: usize,
    runs: usize,
    train: bool,
    forward: bool,
    stock: bool,
    memory: bool,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut a = Args {
        size: 256,
        batch: 1,
        in_channels: 1,
        runs: 5,
        train: false,
        forward: true,
        stock: false,
        memory: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--train" => a.train = true,
            "--no-forward" => a.forward = false,
            "--stock" => a.stock = true,
            "--memory" => a.memory = true,
            // `cargo bench` passes this to the bench target that includes this file.
            "--bench" => {}
            "--size" | "--batch" | "--runs" | "--in-channels" => {
                let value = it.next().ok_or(format!("{flag} needs a value"))?;
                let v: usize = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
                match flag.as_str() {
                    "--size" => a.size = v,
                    "--batch" => a.batch = v,
                    "--in-channels" => a.in_channels = v,
                    _ => a.runs = v.max(1),
                }
            }
            _ => {
                return Err(format!(
                    "unknown flag {flag} (use --size, --batch, --in-channels, --runs, --train, \
                     --no-forward, --stock, --memory)"
                ))
            }
        }
    }
    Ok(a)
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

/// Peak resident set size of this process in MiB (Linux), if it can be read.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn main() -> Result<()> {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    if args.stock {
        unetpp::ops::set_fast_cpu_conv(false);
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
        "UNet++ paper configuration, input {b}x{c}x{s}x{s}, f32, {device:?}, {kernels}, {} thread(s)",
        rayon::current_num_threads()
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
    if args.forward {
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
        let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
        let t = median_seconds(
            || {
                let out = net.forward_t(&x, true)?;
                let loss = unetpp::loss::deep_supervision_bce_dice(out.logits(), &target)?;
                Ok::<(), Error>(opt.backward_step(&loss)?)
            },
            args.runs,
        )?;
        println!(
            "training step (L4, 4 heads, AdamW, batch {b}): median of {} runs {t:.3} s",
            args.runs
        );
    }
    Ok(())
}
