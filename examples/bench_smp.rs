//! Times segmentation_models_pytorch's `UnetPlusPlus` (ResNet-34 encoder, smp's default
//! decoder channels, one class) as unetpp runs it (`interop::smp::SmpUnetPlusPlus`):
//! inference on 1×3×256×256 and 1×3×512×512, and a training step (forward in training mode,
//! mean squared logits, backward) on 2×3×256×256. `scripts/bench_smp.py` times smp on the same
//! shapes; `docs/PERFORMANCE.md` has both.
//!
//! ```text
//! cargo run --release --example bench_smp -- [--runs 5]
//! ```

mod support;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use clap::Parser;
use unetpp::interop::smp::{SmpConfig, SmpUnetPlusPlus};

/// Times segmentation_models_pytorch's UnetPlusPlus (ResNet-34 encoder) as unetpp runs it:
/// inference on 1×3×256×256 and 1×3×512×512, a training step on 2×3×256×256.
#[derive(Parser)]
#[command(args_override_self = true)]
struct Args {
    /// Timed runs after one warm-up
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

fn main() -> unetpp::Result<()> {
    let Args { runs } = Args::parse();
    let dev = Device::Cpu;
    let cfg = SmpConfig::resnet34().build()?;
    let varmap = VarMap::new();
    let net = SmpUnetPlusPlus::new(
        &cfg,
        unetpp::nn::seeded_var_builder(&varmap, 0, DType::F32, &dev),
    )?;
    println!("threads: {}", rayon::current_num_threads());
    for (n, hw) in [(1usize, 256usize), (1, 512)] {
        let x = Tensor::rand(0f32, 1., (n, 3, hw, hw), &dev)?;
        let t = support::median_seconds(|| net.forward(&x).map(|_| ()), runs)?;
        println!("smp UnetPlusPlus resnet34 inference {n}x3x{hw}x{hw}: {t:.3} s");
    }
    let x = Tensor::rand(0f32, 1., (2, 3, 256, 256), &dev)?;
    let t = support::median_seconds(
        || -> unetpp::Result<()> {
            let loss = net.forward_t(&x, true)?.sqr()?.mean_all()?;
            loss.backward()?;
            Ok(())
        },
        runs,
    )?;
    println!("smp UnetPlusPlus resnet34 training step 2x3x256x256: {t:.3} s");
    Ok(())
}
