//! Segments an image or a folder of images with a trained or imported network: label masks
//! out, probability maps and overlays on request; sliding windows for images of any size,
//! test-time augmentation, 8/16-bit PNG, TIFF and JPEG in.
//!
//! ```text
//! cargo run --release --example predict -- --weights runs/train/model.safetensors \
//!     --input images/ --out predictions/ [--window 256 --overlap 0.25 --blend gaussian] \
//!     [--tta flips|rotations] [--mode accurate|last|fast:J] [--level L] \
//!     [--normalize scale|min-max|percentiles] [--probabilities] [--overlay] [--spread]
//! ```
//!
//! For each image `NAME.ext` it writes `NAME.png`, the label mask (the class index of each
//! pixel, 8-bit; 16-bit when there are more than 256 classes; `--spread` scales indices to
//! 0..255 for viewing); with `--probabilities` the probability maps as 32-bit float TIFFs
//! (`NAME_prob.tif` for one output channel, `NAME_prob_K.tif` per class otherwise); with
//! `--overlay` `NAME_overlay.png`, the image with the prediction coloured over it.
//!
//! `--weights` takes a UNet++ or U-Net saved by this crate (`train` writes
//! `model.safetensors`), or PyTorch weights exported to safetensors: MONAI's
//! BasicUNetPlusPlus, pytorch-nested-unet's NestedUNet, segmentation_models_pytorch's
//! UnetPlusPlus (`--format`, default `auto`: tried in that order). Without `--window` the
//! whole image runs at once. A progress bar counts images and, with a window, windows.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use clap::Parser;
use unetpp::data::image_io::{write_f32_tiff, write_gray, write_gray16, write_rgb};
use unetpp::metrics::labels_from_probabilities;

#[path = "support/cli.rs"]
mod cli;
#[path = "support/infer.rs"]
mod infer;
#[path = "support/report.rs"]
mod report;
use infer::{AnyError, InferenceArgs};

/// Segments an image or a folder of images: label masks, probability maps, overlays.
#[derive(Parser, Debug)]
#[command(args_override_self = true)]
struct Args {
    /// An image (png, tif, tiff, jpg, jpeg) or a folder of them
    #[arg(long, value_name = "PATH")]
    input: PathBuf,
    /// Folder the outputs go to (created if needed)
    #[arg(long, value_name = "DIR", default_value = "predictions")]
    out: PathBuf,
    #[command(flatten)]
    inference: InferenceArgs,
    /// Also write the probability maps as 32-bit float TIFFs
    #[arg(long)]
    probabilities: bool,
    /// Also write the image with the prediction coloured over it
    #[arg(long)]
    overlay: bool,
    /// Scale the mask's class indices to 0..255 (for viewing) instead of storing them
    #[arg(long)]
    spread: bool,
    /// No progress bar (a line per image instead)
    #[arg(long)]
    quiet: bool,
    /// Let glibc return freed memory to the system at once (its default; on a large image
    /// every window then page-faults its activations back: 2-3x slower, for a slightly lower
    /// peak)
    #[arg(long)]
    return_freed_memory: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), AnyError> {
    let args = Args::parse();
    if !args.return_freed_memory {
        unetpp::device::keep_freed_memory(1 << 30);
    }
    let device = Device::Cpu;
    let files = infer::image_files(&args.input)?;
    let loaded = infer::load(&args.inference, &device)?;
    let segmenter = args.inference.segmenter(loaded.net.as_ref())?;
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{}", loaded.description);
    println!("{}", args.inference.describe());

    let bars = infer::Bars::new(files.len(), args.quiet)?;
    let started = Instant::now();
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| format!("{}: no usable file name", path.display()))?
            .to_string();
        let t = Instant::now();
        let (input, c, h, w) = infer::read_input(path, args.inference.normalization(), &device)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let probs = bars.probabilities(&segmenter, &input, path)?;
        // One full-size copy at a time: the labels, then each class's probabilities.
        let image = if args.overlay {
            Some(input.flatten_all()?.to_vec1::<f32>()?)
        } else {
            None
        };
        drop(input);
        let labels = labels_from_probabilities(&probs)?
            .flatten_all()?
            .to_vec1::<u32>()?;
        let classes = probs.dim(1)?.max(2);
        write_mask(
            &args,
            &args.out.join(format!("{name}.png")),
            &labels,
            classes,
            w,
            h,
        )?;
        if args.probabilities {
            write_probabilities(&args.out, &name, &probs, w, h)?;
        }
        drop(probs);
        if let Some(image) = image {
            let rgb = report::tinted(&image, c, h, w, &labels);
            write_rgb(args.out.join(format!("{name}_overlay.png")), &rgb, w, h)?;
        }
        if args.quiet {
            println!("{name}: {c}x{h}x{w} in {:.2} s", t.elapsed().as_secs_f64());
        }
    }
    bars.finish();
    println!(
        "segmented {} image(s) in {:.1} s; outputs in {}",
        files.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}

fn write_mask(
    args: &Args,
    path: &std::path::Path,
    labels: &[u32],
    classes: usize,
    w: usize,
    h: usize,
) -> Result<(), AnyError> {
    if classes <= 256 {
        let mask: Vec<u8> = labels
            .iter()
            .map(|&l| {
                if args.spread {
                    (l as usize * 255 / (classes - 1)) as u8
                } else {
                    l as u8
                }
            })
            .collect();
        write_gray(path, &mask, w, h)?;
    } else {
        let mask: Vec<u16> = labels.iter().map(|&l| l as u16).collect();
        write_gray16(path, &mask, w, h)?;
    }
    Ok(())
}

fn write_probabilities(
    out: &std::path::Path,
    name: &str,
    probs: &Tensor,
    w: usize,
    h: usize,
) -> Result<(), AnyError> {
    let k = probs.dim(1)?;
    for class in 0..k {
        let plane = probs
            .narrow(1, class, 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let file = if k == 1 {
            format!("{name}_prob.tif")
        } else {
            format!("{name}_prob_{class}.tif")
        };
        write_f32_tiff(out.join(file), &plane, w, h)?;
    }
    Ok(())
}
