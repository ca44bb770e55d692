//! A data set of image / mask PNG pairs in two folders.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Path, PathBuf};

use super::png_io::{read_image, read_mask};
use super::{Dataset, Sample};
use crate::{Error, Result};

/// How a mask PNG's pixel values map to classes.
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

/// Images in one folder, label masks in another, paired by file name.
///
/// Both folders are listed for `*.png` files (the extension in any case), sorted by name;
/// sample `i` is the `i`-th image. The mask of `images/name.png` is `masks/name.png` or, when
/// that does not exist, `masks/name_mask.png`. Every image needs a mask and every mask an
/// image. Images are read with [`read_image`] (grey, colour or indexed, 8 or 16 bit) and must
/// all have the channel count of the first; masks with [`read_mask`] (single-channel) and
/// decoded by the [`MaskEncoding`]. Files are read when a sample is asked for, so an error in
/// one file shows up then, naming it.
///
/// ```no_run
/// use unetpp::data::Dataset;
/// use unetpp::data::folder::{MaskEncoding, PngFolder};
///
/// let data = PngFolder::open("data/images", "data/masks", MaskEncoding::Binary)?;
/// let first = data.get(0)?;
/// println!("{} samples of {} channels", data.len(), first.channels);
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PngFolder {
    pairs: Vec<(PathBuf, PathBuf)>,
    channels: usize,
    encoding: MaskEncoding,
}

impl PngFolder {
    /// Lists and pairs the two folders and reads the first image for the channel count.
    ///
    /// Errors name the folder or file: a folder that cannot be read or holds no PNG, an image
    /// without a mask, a mask without an image, a first image that cannot be read, or a
    /// `ClassIndex` encoding of fewer than 2 classes.
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
        let images = list_pngs(images_dir)?;
        let mut masks: BTreeMap<OsString, PathBuf> = list_pngs(masks_dir)?
            .into_iter()
            .filter_map(|p| Some((p.file_stem()?.to_os_string(), p)))
            .collect();
        let mut pairs = Vec::with_capacity(images.len());
        for image in images {
            let stem = image.file_stem().unwrap_or(OsStr::new("")).to_os_string();
            let mut suffixed = stem.clone();
            suffixed.push("_mask");
            let mask = masks
                .remove(&stem)
                .or_else(|| masks.remove(&suffixed))
                .ok_or_else(|| {
                    not_found(
                        &image,
                        format!(
                            "image has no mask `{0}.png` or `{0}_mask.png` in `{1}`",
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
            Some((image, _)) => read_image(image)?.1,
            None => 0,
        };
        Ok(Self {
            pairs,
            channels,
            encoding,
        })
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

impl Dataset for PngFolder {
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
        let (image, c, h, w) = read_image(image_path)?;
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
        Sample::new(image, mask, c, h, w)
    }

    fn channels(&self) -> usize {
        self.channels
    }

    fn num_classes(&self) -> usize {
        self.encoding.num_classes()
    }
}

/// The `*.png` files of `dir`, sorted by name; a folder without any is an error.
fn list_pngs(dir: &Path) -> Result<Vec<PathBuf>> {
    let io_err = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err)? {
        let path = entry.map_err(io_err)?.path();
        let is_png = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(not_found(dir, "folder holds no .png file".into()));
    }
    files.sort();
    Ok(files)
}

fn not_found(path: &Path, msg: String) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::NotFound, msg),
    }
}
