//! A data set of image / mask pairs in two folders, in PNG, TIFF or JPEG.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use super::image_io::{read_mask, FileFormat, Image};
use super::normalize::Normalize;
use super::{Dataset, Sample};
use crate::{Error, Result};

/// How a mask's pixel values map to classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskEncoding {
    /// Foreground / background: any value above 0 is class 1 (so 0/255 and 0/1 masks both
    /// work). Two classes.
    Binary,
    /// Each value is the class index itself, `0..num_classes`; a larger value is an error.
    ClassIndex {
        /// Classes, background included.
        num_classes: usize,
    },
}

impl MaskEncoding {
    /// Classes, background included.
    pub fn num_classes(&self) -> usize {
        match *self {
            MaskEncoding::Binary => 2,
            MaskEncoding::ClassIndex { num_classes } => num_classes,
        }
    }
}

/// Images in one folder, label masks in another, paired by file stem.
///
/// Both folders are listed for image files, those with the extension `png`, `tif`, `tiff`,
/// `jpg` or `jpeg` (in any case); other files are ignored. Sample `i` is the image of the
/// `i`-th stem in sorted order. The mask of `images/name.<ext>` is `masks/name.<ext2>` or, when there is
/// none, `masks/name_mask.<ext2>`, whatever the two extensions (a JPEG image may have a PNG
/// mask). Every image needs exactly one mask and every mask an image; two files of one stem
/// in a folder are ambiguous, an error.
///
/// Images are read with [`Image::read`] (grey or colour, 8 or 16 bit, float TIFF), normalised
/// by the folder's [`Normalize`] (by default [`Normalize::Scale`], to `[0, 1]` by the type's
/// maximum; see [`ImageFolder::normalize`]), and must all have the channel count of the
/// first. Masks are read with [`read_mask`] (single-channel PNG or TIFF; a JPEG mask is an
/// error, its compression being lossy) and decoded by the [`MaskEncoding`]. Files are read
/// when a sample is asked for, so an error in one file shows up then, naming it.
///
/// ```no_run
/// use unetpp::data::Dataset;
/// use unetpp::data::folder::{ImageFolder, MaskEncoding};
/// use unetpp::data::normalize::Normalize;
///
/// let data = ImageFolder::open("data/images", "data/masks", MaskEncoding::Binary)?
///     .normalize(Normalize::MICROSCOPY)?;
/// let first = data.get(0)?;
/// println!("{} samples of {} channels", data.len(), first.channels);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ImageFolder {
    pairs: Vec<(PathBuf, PathBuf)>,
    channels: usize,
    encoding: MaskEncoding,
    normalize: Normalize,
}

/// The former name of [`ImageFolder`], from when it read PNG files only.
#[deprecated(note = "renamed `ImageFolder` (it reads TIFF and JPEG too)")]
pub type PngFolder = ImageFolder;

impl ImageFolder {
    /// Lists and pairs the two folders and reads the first image for the channel count.
    ///
    /// Errors name the folder or file: a folder that cannot be read or holds no image file,
    /// two files of one stem in a folder, an image without a mask, a mask without an image, a
    /// first image that cannot be read, or a `ClassIndex` encoding of fewer than 2 classes.
    pub fn open(
        images_dir: impl AsRef<Path>,
        masks_dir: impl AsRef<Path>,
        encoding: MaskEncoding,
    ) -> Result<Self> {
        let (images_dir, masks_dir) = (images_dir.as_ref(), masks_dir.as_ref());
        if encoding.num_classes() < 2 {
            return Err(Error::config(
                "num_classes",
                format!(
                    "a class-index mask needs at least 2 classes, got {}",
                    encoding.num_classes()
                ),
            ));
        }
        let images = by_stem(images_dir)?;
        let mut masks = by_stem(masks_dir)?;
        let mut pairs = Vec::with_capacity(images.len());
        for (stem, image) in images {
            let mut suffixed = stem.clone();
            suffixed.push("_mask");
            let mask = masks
                .remove(&stem)
                .or_else(|| masks.remove(&suffixed))
                .ok_or_else(|| {
                    not_found(
                        &image,
                        format!(
                            "image has no mask `{0}.*` or `{0}_mask.*` in `{1}`",
                            stem.to_string_lossy(),
                            masks_dir.display()
                        ),
                    )
                })?;
            pairs.push((image, mask));
        }
        if let Some(orphan) = masks.into_values().next() {
            return Err(not_found(
                &orphan,
                format!("mask has no image partner in `{}`", images_dir.display()),
            ));
        }
        let channels = match pairs.first() {
            Some((image, _)) => Image::read(image)?.channels,
            None => 0,
        };
        Ok(Self {
            pairs,
            channels,
            encoding,
            normalize: Normalize::Scale,
        })
    }

    /// The same folder with images normalised as `how` says (checked: invalid percentiles
    /// are an [`Error::Config`]).
    pub fn normalize(mut self, how: Normalize) -> Result<Self> {
        how.validate()?;
        self.normalize = how;
        Ok(self)
    }

    /// How images are normalised.
    pub fn normalization(&self) -> Normalize {
        self.normalize
    }

    /// The `(image, mask)` file pairs, in sample order.
    pub fn pairs(&self) -> &[(PathBuf, PathBuf)] {
        &self.pairs
    }

    /// How mask values are read.
    pub fn encoding(&self) -> MaskEncoding {
        self.encoding
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Reads pair `index`. Besides unreadable files, a size mismatch between image and mask,
    /// an image of another channel count than the first, and (for
    /// [`MaskEncoding::ClassIndex`]) a mask value of `num_classes` or more are errors naming
    /// the files.
    fn get(&self, index: usize) -> Result<Sample> {
        let (image_path, mask_path) = self.pairs.get(index).ok_or_else(|| {
            Error::Input(format!(
                "sample {index} asked of a folder of {} pairs",
                self.pairs.len()
            ))
        })?;
        let image = Image::read(image_path)?;
        let (c, h, w) = (image.channels, image.height, image.width);
        if c != self.channels {
            return Err(Error::Shape(format!(
                "`{}` has {c} channels but the data set's images have {}",
                image_path.display(),
                self.channels
            )));
        }
        let (values, mh, mw) = read_mask(mask_path)?;
        if (mh, mw) != (h, w) {
            return Err(Error::Shape(format!(
                "image `{}` is {h}x{w} but its mask `{}` is {mh}x{mw}",
                image_path.display(),
                mask_path.display()
            )));
        }
        let mask = match self.encoding {
            MaskEncoding::Binary => values.into_iter().map(|v| (v > 0) as u32).collect(),
            MaskEncoding::ClassIndex { num_classes } => {
                if let Some(p) = values.iter().position(|&v| v as usize >= num_classes) {
                    return Err(Error::config(
                        "num_classes",
                        format!(
                            "mask `{}` holds value {} at row {}, column {}, not below num_classes {num_classes}",
                            mask_path.display(),
                            values[p],
                            p / w,
                            p % w
                        ),
                    ));
                }
                values
            }
        };
        Sample::new(image.into_normalized(self.normalize)?, mask, c, h, w)
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn num_classes(&self) -> usize {
        self.encoding.num_classes()
    }
}

/// The image files of `dir` (see [`FileFormat::from_path`]) by stem, sorted; a folder without
/// any, or with two of one stem, is an error.
fn by_stem(dir: &Path) -> Result<BTreeMap<OsString, PathBuf>> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        if FileFormat::from_path(&path).is_none() || !path.is_file() {
            continue;
        }
        let stem = path.file_stem().unwrap_or(OsStr::new("")).to_os_string();
        if let Some(other) = files.insert(stem, path.clone()) {
            return Err(Error::Io {
                path,
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "`{}` has the same stem: which of the two is meant is ambiguous",
                        other.display()
                    ),
                ),
            });
        }
    }
    if files.is_empty() {
        return Err(not_found(
            dir,
            "folder holds no image file (png, tif, tiff, jpg, jpeg)".into(),
        ));
    }
    Ok(files)
}

fn not_found(path: &Path, msg: String) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::NotFound, msg),
    }
}
