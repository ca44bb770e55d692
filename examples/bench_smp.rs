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
use candle_nn::{VarBuilder, VarMap};
use unetpp::encoders::ResNetConfig;
use unetpp::interop::smp::{SmpConfig, SmpUnetPlusPlus};

fn main() -> unetpp::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dev = Device::Cpu;
    let cfg = SmpConfig {
        encoder: ResNetConfig::resnet34(),
        decoder_channels: [256, 128, 64, 32, 16],
        classes: 1,
    };
    let varmap = VarMap::new();
    let net = SmpUnetPlusPlus::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    unetpp::train::seeded_init(&varmap, 0)?;
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
