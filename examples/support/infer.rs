//! What `predict` and `evaluate` share: loading a network from any of the weight files the
//! crate reads, and the inference flags (mode, pruning, sliding window, test-time
//! augmentation, normalisation).
#![allow(dead_code)] // each example uses a part of it

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clap::{Args, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use unetpp::data::image_io::FileFormat;
use unetpp::data::normalize::Normalize;
use unetpp::inference::{Blend, Segmenter, SlidingWindow, Tta};
use unetpp::interop::{monai, nested_unet, smp::SmpUnetPlusPlus};
use unetpp::model::{Mode, MultiHeadSegmenter};
use unetpp::{UNet, UNetPlusPlus};

pub type AnyError = Box<dyn std::error::Error>;

/// Which file format the weights are in.
#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum Format {
    /// Try each format below in turn
    Auto,
    /// A UNet++ saved by this crate (`train`, `UNetPlusPlus::save`)
    Unetpp,
    /// A U-Net saved by this crate
    Unet,
    /// MONAI's BasicUNetPlusPlus state_dict (scripts/export_monai.py)
    Monai,
    /// pytorch-nested-unet's NestedUNet state_dict
    NestedUnet,
    /// segmentation_models_pytorch's UnetPlusPlus state_dict (inputs: multiples of 32)
    Smp,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum BlendArg {
    Constant,
    Gaussian,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum TtaArg {
    /// No augmentation
    None,
    /// Every combination of horizontal and vertical flips (4 passes)
    Flips,
    /// Flips and 90° rotations: the 8 symmetries of the square (8 passes)
    Rotations,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
pub enum NormalizeArg {
    /// Divide by the type's maximum (255, 65535); float TIFFs as stored
    Scale,
    /// Per image and channel, minimum to 0 and maximum to 1
    MinMax,
    /// Per image and channel, the --percentiles to 0 and 1, clipped (16-bit microscopy)
    Percentiles,
}

/// The network and how to run it.
#[derive(Args, Debug, Clone)]
pub struct InferenceArgs {
    /// Weights: a file saved by this crate, or a PyTorch state_dict exported to safetensors
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// Format of --weights
    #[arg(long, value_enum, default_value = "auto")]
    pub format: Format,
    /// Output used: accurate (mean of the heads' probabilities), last (deepest head) or
    /// fast:J (the head on X^{0,J})
    #[arg(long, default_value = "accurate", value_parser = parse_mode)]
    pub mode: Mode,
    /// Prune a UNet++ to level L (1..depth) before running it (keeps the head X^{0,L})
    #[arg(long, value_name = "L")]
    pub level: Option<usize>,
    /// Sliding window size, one value (square) or H,W; without it the whole image runs at
    /// once (its sides must then suit the network, e.g. multiples of 16 for depth 4)
    #[arg(long, value_name = "SIZE", value_parser = parse_window)]
    pub window: Option<WindowSize>,
    /// Overlap of neighbouring windows, in [0, 1)
    #[arg(long, default_value_t = 0.25)]
    pub overlap: f64,
    /// How overlapping windows are blended
    #[arg(long, value_enum, default_value = "gaussian")]
    pub blend: BlendArg,
    /// The Gaussian's sigma as a fraction of the window
    #[arg(long, default_value_t = 0.125)]
    pub sigma: f64,
    /// Windows per forward pass (memory grows with it; on a CPU one is as fast)
    #[arg(long, default_value_t = 1)]
    pub window_batch: usize,
    /// Test-time augmentation, averaged in probability space
    #[arg(long, value_enum, default_value = "none")]
    pub tta: TtaArg,
    /// How image values are scaled (the network must have been trained on the same)
    #[arg(long, value_enum, default_value = "scale")]
    pub normalize: NormalizeArg,
    /// Low and high percentiles for --normalize percentiles
    #[arg(long, value_name = "LOW,HIGH", default_value = "1,99.8", value_parser = crate::cli::percentiles)]
    pub percentiles: Normalize,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "accurate" => Ok(Mode::Accurate),
        "last" => Ok(Mode::Last),
        _ => match s.strip_prefix("fast:").map(str::parse::<usize>) {
            Some(Ok(j)) => Ok(Mode::Fast(j)),
            _ => Err(format!(
                "`{s}`: expected accurate, last or fast:J (J a head's column)"
            )),
        },
    }
}

/// A window's height and width (clap takes a `Vec` for a repeated flag, hence the wrapper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSize(pub [usize; 2]);

fn parse_window(s: &str) -> Result<WindowSize, String> {
    let sizes = s
        .split(',')
        .map(|v| v.trim().parse::<usize>().map_err(|e| format!("`{v}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    match sizes.as_slice() {
        [n] if *n > 0 => Ok(WindowSize([*n, *n])),
        [h, w] if *h > 0 && *w > 0 => Ok(WindowSize([*h, *w])),
        _ => Err("expected a positive size or H,W".into()),
    }
}

/// A loaded network, whatever its source.
pub struct Loaded {
    pub net: Box<dyn MultiHeadSegmenter>,
    /// What was loaded, for the log.
    pub description: String,
    /// Output channels: 1 (sigmoid) or the number of classes (softmax).
    pub classes: usize,
}

/// Loads `--weights` as `--format` says (trying each format for `auto`), pruned to `--level`.
pub fn load(args: &InferenceArgs, device: &Device) -> Result<Loaded, AnyError> {
    let path = &args.weights;
    let chosen = [args.format];
    let order: &[Format] = match args.format {
        Format::Auto => &[
            Format::Unetpp,
            Format::Unet,
            Format::Monai,
            Format::NestedUnet,
            Format::Smp,
        ],
        _ => &chosen,
    };
    let mut errors = Vec::new();
    for &format in order {
        match load_as(path, format, args.level, device) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => errors.push(format!("  as {format:?}: {e}")),
        }
    }
    Err(format!(
        "cannot load {} as a network:\n{}",
        path.display(),
        errors.join("\n")
    )
    .into())
}

fn load_as(
    path: &Path,
    format: Format,
    level: Option<usize>,
    device: &Device,
) -> Result<Loaded, AnyError> {
    let unetpp = |net: UNetPlusPlus, what: &str| -> Result<Loaded, AnyError> {
        let net = match level {
            Some(l) => net.prune(l)?,
            None => net,
        };
        let cfg = net.config();
        Ok(Loaded {
            description: format!(
                "{what}: widths {:?}, depth {}, level {}, heads {:?}, {} parameters",
                cfg.widths(),
                cfg.depth(),
                net.level(),
                net.head_cols(),
                net.num_parameters()
            ),
            classes: cfg.num_classes(),
            net: Box::new(net),
        })
    };
    let no_level = |what: &str| -> Result<(), AnyError> {
        match level {
            Some(_) => Err(format!("--level prunes a UNet++; {what} cannot be pruned").into()),
            None => Ok(()),
        }
    };
    match format {
        Format::Unetpp => unetpp(UNetPlusPlus::load(path, device)?, "UNet++"),
        Format::Monai => unetpp(
            monai::load_monai(path, device)?.0,
            "MONAI BasicUNetPlusPlus",
        ),
        Format::NestedUnet => unetpp(nested_unet::load_nested_unet(path, device)?.0, "NestedUNet"),
        Format::Unet => {
            let net = UNet::load(path, device)?;
            no_level("a U-Net")?;
            Ok(Loaded {
                description: format!(
                    "U-Net: widths {:?}, {} parameters",
                    net.config().widths(),
                    net.num_parameters()
                ),
                classes: net.config().num_classes(),
                net: Box::new(net),
            })
        }
        Format::Smp => {
            let net = SmpUnetPlusPlus::load_detected(path, device)?;
            no_level("smp's UnetPlusPlus")?;
            Ok(Loaded {
                description: format!(
                    "segmentation_models_pytorch UnetPlusPlus, {} parameters",
                    MultiHeadSegmenter::num_parameters(&net)
                ),
                classes: net.config().classes(),
                net: Box::new(net),
            })
        }
        Format::Auto => Err("auto is not a format".into()),
    }
}

impl InferenceArgs {
    /// The normalisation of the image values.
    pub fn normalization(&self) -> Normalize {
        match self.normalize {
            NormalizeArg::Scale => Normalize::Scale,
            NormalizeArg::MinMax => Normalize::MinMax,
            NormalizeArg::Percentiles => self.percentiles,
        }
    }

    /// The sliding window, if one was asked for.
    pub fn sliding_window(&self) -> Result<Option<SlidingWindow>, AnyError> {
        let Some(window) = &self.window else {
            return Ok(None);
        };
        let blend = match self.blend {
            BlendArg::Constant => Blend::Constant,
            BlendArg::Gaussian => Blend::Gaussian {
                sigma_scale: self.sigma,
            },
        };
        Ok(Some(
            SlidingWindow::builder(window.0.to_vec())
                .overlap(self.overlap)
                .blend(blend)
                .batch_size(self.window_batch)
                .build()?,
        ))
    }

    /// The segmenter over `net`.
    pub fn segmenter<'m>(
        &self,
        net: &'m (dyn MultiHeadSegmenter + 'static),
    ) -> Result<Segmenter<'m, dyn MultiHeadSegmenter>, AnyError> {
        let mut s = Segmenter::new(net).mode(self.mode);
        if let Some(w) = self.sliding_window()? {
            s = s.sliding_window(w);
        }
        match self.tta {
            TtaArg::None => {}
            TtaArg::Flips => s = s.tta(Tta::flips(2)?),
            TtaArg::Rotations => s = s.tta(Tta::flips_and_rotations(2)?),
        }
        Ok(s)
    }

    /// A line saying how the network runs.
    pub fn describe(&self) -> String {
        let window = match &self.window {
            Some(WindowSize([h, w])) => format!(
                "sliding window {h}x{w}, overlap {}, {:?} blending{}, {} window(s) per pass",
                self.overlap,
                self.blend,
                if self.blend == BlendArg::Gaussian {
                    format!(" (sigma {} of the window)", self.sigma)
                } else {
                    String::new()
                },
                self.window_batch
            ),
            None => "whole images".into(),
        };
        format!(
            "mode {:?}; {window}; test-time augmentation: {:?}; normalisation: {:?}",
            self.mode,
            self.tta,
            self.normalization()
        )
    }
}

/// Reads an image as the network's input `(1, C, H, W)`.
pub fn read_input(
    path: &Path,
    how: Normalize,
    device: &Device,
) -> Result<(Tensor, usize, usize, usize), AnyError> {
    let (values, c, h, w) = unetpp::data::image_io::read_image_with(path, how)?;
    Ok((Tensor::from_vec(values, (1, c, h, w), device)?, c, h, w))
}

/// Two progress bars: images done, and the windows of the current image.
pub struct Bars {
    _multi: MultiProgress,
    images: ProgressBar,
    windows: ProgressBar,
}

impl Bars {
    /// Bars over `images` images, drawn on the terminal unless `hidden`.
    pub fn new(images: usize, hidden: bool) -> Result<Self, AnyError> {
        let multi = MultiProgress::new();
        if hidden {
            multi.set_draw_target(ProgressDrawTarget::hidden());
        }
        let bar = |len, template| -> Result<ProgressBar, AnyError> {
            Ok(multi
                .add(ProgressBar::new(len))
                .with_style(ProgressStyle::with_template(template)?))
        };
        Ok(Self {
            images: bar(
                images as u64,
                "images  {bar:30} {pos}/{len} {elapsed_precise} {msg}",
            )?,
            windows: bar(0, "windows {bar:30} {pos}/{len} {per_sec}")?,
            _multi: multi,
        })
    }

    /// Probabilities `(1, K, H, W)` of one image named `name`, counting its windows, then
    /// the image. Errors name the image's file.
    pub fn probabilities(
        &self,
        segmenter: &Segmenter<'_, dyn MultiHeadSegmenter>,
        input: &Tensor,
        path: &Path,
    ) -> Result<Tensor, AnyError> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        self.images.set_message(name.unwrap_or_default());
        self.windows.reset();
        let probs = segmenter
            .probabilities_with_progress(input, |p| {
                self.windows.set_length(p.total as u64);
                self.windows.set_position(p.done as u64);
            })
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.images.inc(1);
        Ok(probs)
    }

    /// Leaves the images bar and removes the windows bar.
    pub fn finish(&self) {
        self.images.finish();
        self.windows.finish_and_clear();
    }
}

/// Every image file (png, tif, tiff, jpg, jpeg; any case) of a folder, sorted, or the one
/// file given.
pub fn image_files(input: &Path) -> Result<Vec<PathBuf>, AnyError> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input).map_err(|e| format!("{}: {e}", input.display()))? {
        let path = entry?.path();
        if path.is_file() && FileFormat::from_path(&path).is_some() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no png, tif or jpg images in {}", input.display()).into());
    }
    Ok(files)
}
