//! Loads UNet++ weights trained in PyTorch, prints what was detected, segments an image and
//! writes the mask as a PNG.
//!
//! ```text
//! python scripts/export_monai.py model.pt monai.safetensors
//! cargo run --release --example import_pytorch -- --monai monai.safetensors   (or --nested-unet FILE)
//!     [--image in.png] [--out mask.png] [--export-monai FILE | --export-smp FILE | --export-nested-unet FILE]
//! ```
//!
//! Sources: MONAI's `BasicUNetPlusPlus` (`--monai`), pytorch-nested-unet's `NestedUNet`
//! (`--nested-unet`) and segmentation_models_pytorch's `UnetPlusPlus` with a ResNet encoder
//! (`--smp`; inputs must be multiples of 32). Without `--image` it segments a
//! synthetic 64×64 image. The mask holds the arg-max class of each pixel (for one output
//! channel, 255 where the probability exceeds 0.5). `--export-monai` writes the network back
//! under MONAI's names (`BasicUNetPlusPlus.load_state_dict` takes it, see
//! `scripts/roundtrip_monai.py`); `--export-smp` does the same for smp weights
//! (`scripts/roundtrip_smp.py`).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::{ArgGroup, Parser};
use unetpp::data::synthetic::{SyntheticConfig, SyntheticDataset};
use unetpp::data::Dataset;
use unetpp::interop::monai;

type AnyError = Box<dyn std::error::Error>;

/// Loads UNet++ weights trained in PyTorch, prints what was detected, segments an image and
/// writes the mask as a PNG.
#[derive(Parser)]
#[command(args_override_self = true)]
#[command(group(ArgGroup::new("source").required(true).multiple(true)))]
struct Args {
    /// MONAI BasicUNetPlusPlus weights (scripts/export_monai.py)
    #[arg(long, value_name = "FILE", group = "source")]
    #[arg(overrides_with_all = ["nested_unet", "smp"])]
    monai: Option<String>,
    /// pytorch-nested-unet NestedUNet weights
    #[arg(long, value_name = "FILE", group = "source")]
    #[arg(overrides_with_all = ["monai", "smp"])]
    nested_unet: Option<String>,
    /// segmentation_models_pytorch UnetPlusPlus weights (inputs must be multiples of 32)
    #[arg(long, value_name = "FILE", group = "source")]
    #[arg(overrides_with_all = ["monai", "nested_unet"])]
    smp: Option<String>,
    /// Image to segment, PNG, TIFF or JPEG (default: a synthetic 64×64 image)
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// PNG of the mask (arg-max class of each pixel)
    #[arg(long, value_name = "PNG", default_value = "mask.png")]
    out: PathBuf,
    /// Write MONAI weights back under MONAI's names (scripts/roundtrip_monai.py)
    #[arg(long, value_name = "FILE")]
    #[arg(overrides_with_all = ["export_smp", "export_nested_unet"])]
    export_monai: Option<String>,
    /// Write smp weights back under smp's names (scripts/roundtrip_smp.py)
    #[arg(long, value_name = "FILE")]
    #[arg(overrides_with_all = ["export_monai", "export_nested_unet"])]
    export_smp: Option<String>,
    /// Write NestedUNet weights back under NestedUNet's names
    #[arg(long, value_name = "FILE")]
    #[arg(overrides_with_all = ["export_monai", "export_smp"])]
    export_nested_unet: Option<String>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), AnyError> {
    let args = Args::parse();
    // The source flags override each other (the last one wins), as do the export flags.
    let (kind, path) = [
        ("monai", args.monai),
        ("nested-unet", args.nested_unet),
        ("smp", args.smp),
    ]
    .into_iter()
    .find_map(|(kind, path)| Some((kind, path?)))
    .ok_or("name the weights: --monai, --nested-unet or --smp FILE.safetensors")?;
    let (image, out) = (args.image, args.out);
    let export = args
        .export_monai
        .or(args.export_smp)
        .or(args.export_nested_unet);
    let device = Device::Cpu;
    let tensors = unetpp::weights::load_tensors(&path, &device)?;
    // One forward function whatever the source: (input channels, classes, the network's forward).
    type Forward = Box<dyn Fn(&Tensor) -> unetpp::Result<Tensor>>;
    let (in_channels, classes, forward, unet): (usize, usize, Forward, Option<_>) = if kind == "smp"
    {
        let cfg = unetpp::interop::smp::SmpConfig::detect(&tensors)?;
        let net = unetpp::interop::smp::SmpUnetPlusPlus::from_smp(&cfg, tensors, &device)?;
        if let Some(dst) = &export {
            net.save_smp(dst)?;
            println!("exported under smp's names to {dst}");
        }
        println!(
            "segmentation_models_pytorch UnetPlusPlus: encoder {:?}, decoder_channels {:?}, classes {}",
            cfg.encoder().depth(),
            cfg.decoder_channels(),
            cfg.classes()
        );
        let (c, k) = (cfg.in_channels(), cfg.classes());
        (c, k, Box::new(move |x: &Tensor| net.forward(x)), None)
    } else {
        let (net, cfg) = if kind == "monai" {
            let detected = monai::MonaiConfig::detect(&tensors)?;
            println!(
                "MONAI BasicUNetPlusPlus: in_channels {}, out_channels {}, features {:?}",
                detected.in_channels(),
                detected.out_channels(),
                detected.features()
            );
            monai::from_monai(tensors, &device)?
        } else {
            println!("pytorch-nested-unet NestedUNet");
            unetpp::interop::nested_unet::from_nested_unet(tensors, &device)?
        };
        println!(
            "as UNet++: widths {:?}, depth {}, heads {:?}, {} parameters",
            cfg.widths(),
            cfg.depth(),
            cfg.heads(),
            net.num_parameters()
        );
        let (c, k) = (cfg.in_channels(), cfg.num_classes());
        let runner = net.clone();
        (
            c,
            k,
            Box::new(move |x: &Tensor| runner.forward(x)),
            Some(net),
        )
    };

    let (pixels, c, h, w) = match &image {
        Some(p) => unetpp::data::image_io::read_image(p)?,
        None => {
            let s = SyntheticDataset::new(
                SyntheticConfig::builder()
                    .samples(1)
                    .channels(if in_channels == 3 { 3 } else { 1 })
                    .build()?,
            )?
            .get(0)?;
            (s.image, s.channels, s.height, s.width)
        }
    };
    if c != in_channels {
        return Err(
            format!("the image has {c} channel(s), the network takes {in_channels}").into(),
        );
    }
    let x = Tensor::from_vec(pixels, (1, c, h, w), &device)?;
    let logits = forward(&x)?;
    let labels = unetpp::metrics::labels_from_logits(&logits)?;
    let classes = classes.max(2) as u32;
    let mask: Vec<u8> = labels
        .flatten_all()?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|l| (l * 255 / (classes - 1)) as u8)
        .collect();
    unetpp::data::image_io::write_gray(&out, &mask, w, h)?;
    println!(
        "segmented a {c}x{h}x{w} image; mask written to {}",
        out.display()
    );
    if let Some(dst) = export {
        match (&unet, kind) {
            (Some(net), "monai") => {
                monai::save_monai(net, &dst)?;
                println!("exported under MONAI's names to {dst}");
            }
            (Some(net), "nested-unet") => {
                unetpp::interop::nested_unet::save_nested_unet(net, &dst)?;
                println!("exported under NestedUNet's names to {dst}");
            }
            (_, "smp") => {} // written above
            _ => return Err("export needs weights of the same source".into()),
        }
    }
    Ok(())
}
