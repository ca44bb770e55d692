//! Runs a Mask R-CNN (or Mask R-CNN++) from a torchvision state dict exported to safetensors
//! (`scripts/export_torchvision.py`) on an image (PNG, TIFF or JPEG) and draws the detections.
//!
//! ```text
//! python scripts/export_torchvision.py --coco maskrcnn_coco.safetensors
//! cargo run --release --example detect -- --weights maskrcnn_coco.safetensors
//!     [--image photo.png] [--out detections.png] [--score 0.5] [--bn-eps 0] [--nested]
//! ```
//!
//! The number of classes comes from the file (its metadata or the box predictor's shape);
//! batch-norm epsilon is 0 for torchvision's COCO weights (the export marks them) and 1e-5
//! otherwise, unless `--bn-eps` says. Without `--image`, a synthetic nuclei image is used.
//! Prints every detection above `--score` and writes the image with each instance's mask
//! tinted and its box outlined.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clap::Parser;
use unetpp::data::instances::{NucleiConfig, SyntheticNuclei};
use unetpp::encoders::ResNetConfig;
use unetpp::maskrcnn::{MaskRcnn, MaskRcnnConfig, PyramidKind};

type AnyError = Box<dyn std::error::Error>;

/// Runs a Mask R-CNN (or Mask R-CNN++) from a torchvision state dict exported to safetensors
/// on an image (PNG, TIFF or JPEG) and draws the detections.
#[derive(Parser)]
#[command(args_override_self = true, allow_negative_numbers = true)]
struct Args {
    /// The exported state dict (scripts/export_torchvision.py)
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Image to run on, PNG, TIFF or JPEG (default: a synthetic nuclei image)
    #[arg(long, value_name = "IMAGE")]
    image: Option<PathBuf>,
    /// PNG of the image with the detections drawn
    #[arg(long, value_name = "PNG", default_value = "detections.png")]
    out: PathBuf,
    /// Smallest score printed and drawn
    #[arg(long, default_value_t = 0.5)]
    score: f32,
    /// Batch-norm epsilon [default: 0 for torchvision's COCO weights, 1e-5 otherwise]
    #[arg(long, value_name = "EPS")]
    bn_eps: Option<f64>,
    /// Use the nested feature pyramid (Mask R-CNN++)
    #[arg(long)]
    nested: bool,
}

fn main() -> Result<(), AnyError> {
    let args = Args::parse();
    let dev = Device::Cpu;

    let (tensors, meta) = unetpp::weights::load_with_metadata(&args.weights, &dev)?;
    let classes = match meta.get("num_classes") {
        Some(n) => n.parse()?,
        None => tensors
            .get("roi_heads.box_predictor.cls_score.weight")
            .ok_or("no roi_heads.box_predictor.cls_score.weight in the file")?
            .dim(0)?,
    };
    let bn_eps = match args.bn_eps {
        Some(e) => e,
        None if meta.get("coco").map(String::as_str) == Some("true") => 0.0,
        None => 1e-5,
    };
    let pyramid = if args.nested {
        PyramidKind::Nested
    } else {
        PyramidKind::Fpn
    };
    let cfg = MaskRcnnConfig::mask_rcnn(classes)
        .resnet(ResNetConfig::resnet50().frozen_bn(true).bn_eps(bn_eps))
        .pyramid(pyramid)
        .build()?;
    let model = MaskRcnn::from_torchvision(&cfg, tensors, &dev)?;
    println!(
        "{} classes, batch-norm eps {}, {:?} pyramid",
        classes,
        cfg.resnet().bn_eps(),
        cfg.pyramid()
    );

    let (pixels, c, h, w) = match &args.image {
        Some(p) => unetpp::data::image_io::read_image(p)?,
        None => {
            let n = NucleiConfig::builder().samples(1).size(256, 320).build()?;
            (SyntheticNuclei::new(n)?.get(0)?.image, 3, 256, 320)
        }
    };
    let image = Tensor::from_vec(pixels.clone(), (c, h, w), &dev)?;
    let image = if c == 1 {
        image.repeat((3, 1, 1))?
    } else {
        image
    };
    let t0 = std::time::Instant::now();
    let found = model.detect(&[image])?;
    let d = found.into_iter().next().ok_or("no result")?;
    println!(
        "{h}x{w} image, detection took {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    let scores = d.scores.to_vec1::<f32>()?;
    let labels = d.labels.to_vec1::<i64>()?;
    let boxes = d.boxes.to_vec2::<f32>()?;
    let masks = d.binary_masks(0.5)?;
    let mut canvas: Vec<u8> = (0..h * w)
        .flat_map(|p| (0..3).map(move |ch| (ch.min(c - 1), p)))
        .map(|(ch, p)| (pixels[ch * h * w + p] * 255.0) as u8)
        .collect();
    let colours = [
        [230u8, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
    ];
    for k in (0..scores.len()).filter(|&k| scores[k] >= args.score) {
        let b = &boxes[k];
        println!(
            "label {:>3}  score {:.3}  box [{:.1}, {:.1}, {:.1}, {:.1}]",
            labels[k], scores[k], b[0], b[1], b[2], b[3]
        );
        let col = colours[k % colours.len()];
        let m = masks.get(k)?.flatten_all()?.to_vec1::<u8>()?;
        for (p, _) in m.iter().enumerate().filter(|(_, &v)| v != 0) {
            for ch in 0..3 {
                let v = &mut canvas[p * 3 + ch];
                *v = ((*v as u16 + col[ch] as u16) / 2) as u8;
            }
        }
        let (x1, y1) = ((b[0] as usize).min(w - 1), (b[1] as usize).min(h - 1));
        let (x2, y2) = ((b[2] as usize).min(w - 1), (b[3] as usize).min(h - 1));
        for x in x1..=x2 {
            for y in [y1, y2] {
                canvas[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&col);
            }
        }
        for y in y1..=y2 {
            for x in [x1, x2] {
                canvas[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&col);
            }
        }
    }
    unetpp::data::image_io::write_rgb(&args.out, &canvas, w, h)?;
    println!("wrote {}", args.out.display());
    Ok(())
}
