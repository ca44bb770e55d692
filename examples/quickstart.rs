//! Trains the paper's UNet++ briefly on a synthetic task, then prunes it.
//!
//! ```text
//! cargo run --release --example quickstart [-- --steps 40 --size 64 --batch 2 --lr 1e-3]
//! ```
//!
//! Prints the deep-supervision loss falling, the IoU of each head and of accurate mode on
//! held-out images, and for the pruned networks L1–L4 the parameter count, the IoU and the
//! median forward time. The defaults finish in about half a minute on two CPU cores.

use std::time::Instant;

use candle_core::{DType, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use clap::Parser;
use unetpp::data::synthetic::circles_and_squares;
use unetpp::loss::deep_supervision_bce_dice;
use unetpp::metrics::iou_binary;
use unetpp::prelude::*;

#[path = "support/mod.rs"]
mod support;
use support::median_seconds;

/// Trains the paper's UNet++ briefly on a synthetic task, then prunes it.
#[derive(Parser)]
#[command(args_override_self = true, allow_negative_numbers = true)]
struct Args {
    /// Training steps (AdamW)
    #[arg(long, default_value_t = 40)]
    steps: usize,
    /// Side of the square synthetic images, a multiple of 16
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Images per training step
    #[arg(long, default_value_t = 2)]
    batch: usize,
    /// Learning rate
    #[arg(long, default_value = "1e-3")]
    lr: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let device = unetpp::device::best_device(0)?;
    // Training allocates and frees large buffers at every step: let glibc keep them instead of
    // page-faulting them back each time (docs/PERFORMANCE.md; a no-op with other allocators).
    unetpp::device::keep_freed_memory(usize::MAX);
    let cfg = UNetPlusPlusConfig::paper().deep_supervision(true).build()?;
    let varmap = VarMap::new();
    let net = UNetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &device))?;
    println!(
        "UNet++ (paper configuration, deep supervision): {} parameters, device {:?}",
        net.num_parameters(),
        device
    );
    println!(
        "task: {}x{} synthetic circles and squares, batch {}, {} steps of AdamW (lr {})",
        args.size, args.size, args.batch, args.steps, args.lr
    );

    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: args.lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let mut running = Vec::new();
    for step in 1..=args.steps {
        let batch = circles_and_squares(args.batch, args.size, args.size, step as u64, &device)?;
        let out = net.forward_heads(&batch.images, true)?;
        let loss = deep_supervision_bce_dice(out.logits(), &batch.masks)?;
        opt.backward_step(&loss)?;
        running.push(loss.to_scalar::<f32>()?);
        if step % 10 == 0 || step == 1 {
            let recent = &running[running.len().saturating_sub(10)..];
            println!(
                "step {step:4}  loss {:.4}  (mean of last {}: {:.4})",
                running[running.len() - 1],
                recent.len(),
                recent.iter().sum::<f32>() / recent.len() as f32
            );
        }
    }
    println!("trained in {:.1} s", start.elapsed().as_secs_f64());

    // Evaluate on held-out images without recording a graph.
    let trained = net.detach()?;
    let test = circles_and_squares(16, args.size, args.size, 1_000_000, &device)?;
    let out = trained.forward_heads(&test.images, false)?;
    println!("\nheld-out IoU (16 images):");
    for &j in out.cols() {
        println!(
            "  head X^{{0,{j}}} (fast mode)  {:.3}",
            iou_binary(&out.fast(j)?, &test.masks)?
        );
    }
    println!(
        "  accurate mode (mean of heads)  {:.3}",
        iou_binary(&out.accurate()?, &test.masks)?
    );

    println!(
        "\npruned networks (1 image {0}x{0} for the time):",
        args.size
    );
    println!("  level  parameters     IoU  forward (median of 5)");
    let one: Tensor = test.images.narrow(0, 0, 1)?;
    for k in 1..=cfg.depth() {
        let pruned = trained.prune(k)?;
        let probs = candle_nn::ops::sigmoid(&pruned.forward(&test.images)?)?;
        let iou = iou_binary(&probs, &test.masks)?;
        let t = median_seconds(|| pruned.forward(&one).map(|_| ()), 5)?;
        println!(
            "  L{k}  {:>12}  {iou:.3}  {:>8.2} ms",
            pruned.num_parameters(),
            t * 1e3
        );
    }
    println!("\ntotal {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
