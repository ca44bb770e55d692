//! Reading and writing image files: PNG, TIFF and JPEG images, PNG and TIFF label masks.
//!
//! Images are read channel-major `(C, H, W)` like [`Sample::image`](super::Sample::image):
//! [`Image::read`] keeps the stored values and their [`SampleType`], [`read_image`] scales
//! them to `[0, 1]` and [`read_image_with`] applies any [`Normalize`] (percentiles for 16-bit
//! microscopy). Masks are read as the raw integer stored in each pixel (the grey level, or
//! the palette index of an indexed PNG), so a class-index or instance-label mask reads back
//! exactly as it was written.
//!
//! The format is told by the file's first bytes, not its name. Decoding goes through the
//! `image` crate, except where it cannot: mask PNGs through `png` (palette indices and
//! low-bit grey levels, which `image` expands to colours and 8 bits) and 32-bit grey TIFFs
//! (floating-point images, 32-bit integer label masks) through `tiff`. A decoded image may
//! hold at most [`MAX_SAMPLES`] values.
//!
//! Writes go to a temporary file beside the target, which is flushed to disk and then renamed
//! over it: an interrupted write leaves the old file as it was. Every error names the file it
//! happened on (an [`Error::Io`] whose kind tells not found, `UnexpectedEof` for a truncated
//! file, `InvalidData` for a corrupt one, `Unsupported`, or `OutOfMemory` past the size
//! limit), or, for data that do not fit the image's size, an [`Error::Shape`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::codecs::tiff::TiffEncoder;
use image::{
    DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageError, ImageFormat,
    ImageReader, Limits,
};

use super::normalize::Normalize;
use crate::{Error, Result};

/// The most values (pixels × channels) a decoded image may hold, 2³⁰ (4 GiB as `f32`): a
/// corrupt or hostile header must not make us allocate whatever size it claims.
pub const MAX_SAMPLES: u64 = 1 << 30;

/// The most bytes a decoder may allocate (a 16-bit RGBA image of [`MAX_SAMPLES`] values).
const MAX_DECODER_BYTES: u64 = 2 * MAX_SAMPLES;

/// The file formats read and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileFormat {
    /// PNG: grey, grey + alpha, RGB, RGBA or indexed, 1 to 16 bits.
    Png,
    /// TIFF (the first image of a multi-page file): 8- or 16-bit grey, grey + alpha, RGB,
    /// RGBA or CMYK; 32-bit float grey, RGB or RGBA; 32-bit integer grey (masks).
    Tiff,
    /// JPEG, baseline or progressive, grey or colour (images only: it is lossy).
    Jpeg,
}

impl FileFormat {
    /// The format of a file from its first bytes (its magic number), `None` for anything else.
    ///
    /// ```
    /// use unetpp::data::image_io::FileFormat;
    /// assert_eq!(FileFormat::sniff(b"\x89PNG\r\n\x1a\n..."), Some(FileFormat::Png));
    /// assert_eq!(FileFormat::sniff(b"II*\0"), Some(FileFormat::Tiff));
    /// assert_eq!(FileFormat::sniff(b"GIF89a"), None);
    /// ```
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        const TIFF: [&[u8]; 4] = [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"];
        if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(FileFormat::Png)
        } else if TIFF.iter().any(|magic| bytes.starts_with(magic)) {
            Some(FileFormat::Tiff)
        } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(FileFormat::Jpeg)
        } else {
            None
        }
    }

    /// The format a file name's extension names: `png`, `tif`, `tiff`, `jpg` or `jpeg`, in any
    /// case; `None` for any other.
    ///
    /// ```
    /// use unetpp::data::image_io::FileFormat;
    /// assert_eq!(FileFormat::from_path("a/scan.TIF"), Some(FileFormat::Tiff));
    /// assert_eq!(FileFormat::from_path("notes.txt"), None);
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Option<Self> {
        let ext = path.as_ref().extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "png" => Some(FileFormat::Png),
            "tif" | "tiff" => Some(FileFormat::Tiff),
            "jpg" | "jpeg" => Some(FileFormat::Jpeg),
            _ => None,
        }
    }
}

impl fmt::Display for FileFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileFormat::Png => "PNG",
            FileFormat::Tiff => "TIFF",
            FileFormat::Jpeg => "JPEG",
        })
    }
}

/// The type of a file's samples after decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SampleType {
    /// 8-bit unsigned integers (PNG of 1 to 8 bits, expanded; 8-bit TIFF; JPEG).
    U8,
    /// 16-bit unsigned integers.
    U16,
    /// 32-bit floats (TIFF).
    F32,
}

impl SampleType {
    /// Bits per sample: 8, 16 or 32.
    pub fn bits(self) -> u32 {
        match self {
            SampleType::U8 => 8,
            SampleType::U16 => 16,
            SampleType::F32 => 32,
        }
    }

    /// What [`Normalize::Scale`] divides by: 255, 65535, or 1 for floats (taken as already
    /// scaled).
    pub fn max(self) -> f32 {
        match self {
            SampleType::U8 => 255.0,
            SampleType::U16 => 65535.0,
            SampleType::F32 => 1.0,
        }
    }
}

/// A decoded image with its values as stored in the file.
///
/// ```no_run
/// use unetpp::data::image_io::{Image, SampleType};
/// use unetpp::data::normalize::Normalize;
///
/// let image = Image::read("nuclei.tif")?;
/// if image.sample == SampleType::U16 {
///     let (c, h, w) = (image.channels, image.height, image.width);
///     let input = image.into_normalized(Normalize::MICROSCOPY)?;
///     assert_eq!(input.len(), c * h * w);
/// }
/// # Ok::<(), unetpp::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The samples, channel-major `(C, H, W)`, unscaled (0 to 255 for 8-bit files).
    pub values: Vec<f32>,
    /// `C`: 1 for grey, 3 for colour (alpha is dropped, palettes are looked up).
    pub channels: usize,
    /// `H`.
    pub height: usize,
    /// `W`.
    pub width: usize,
    /// The file's sample type after decoding.
    pub sample: SampleType,
}

impl Image {
    /// Reads a PNG, TIFF or JPEG image.
    ///
    /// PNG: 1- to 16-bit grey, grey + alpha, RGB, RGBA or indexed (palettes are looked up,
    /// low-bit grey levels expanded to 8 bits, `v · 255 / (2^bits - 1)`). TIFF: the first
    /// image, 8- or 16-bit grey, grey + alpha, RGB, RGBA (CMYK is converted to RGB), 32-bit
    /// float grey, RGB or RGBA. JPEG: grey or colour. Grey images give one channel, the
    /// others three; alpha is dropped.
    ///
    /// Errors name the file: unreadable, not one of the three formats, truncated, corrupt, of
    /// an unsupported kind (a 32-bit integer or signed TIFF), empty (a side of 0), or larger
    /// than [`MAX_SAMPLES`].
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_file(path)?;
        let format = sniff(path, &bytes)?;
        if format == FileFormat::Tiff {
            if let Some(gray) = read_tiff_gray32(path, &bytes)? {
                return match gray.data {
                    tiff::decoder::DecodingResult::F32(values) => Ok(Image {
                        values,
                        channels: 1,
                        height: gray.height,
                        width: gray.width,
                        sample: SampleType::F32,
                    }),
                    _ => Err(unsupported(
                        path,
                        "a 32-bit integer TIFF is read as a mask (`read_mask`), not an image",
                    )),
                };
            }
        }
        if format == FileFormat::Jpeg && !jpeg_is_complete(&bytes) {
            return Err(truncated(path, format));
        }
        let decoded = decode(path, &bytes, format)?;
        from_dynamic(decoded).ok_or_else(|| unsupported(path, "unsupported colour type"))
    }

    /// The values normalised as `how` says (see [`Normalize::apply`]), channel-major.
    pub fn into_normalized(mut self, how: Normalize) -> Result<Vec<f32>> {
        how.apply(&mut self.values, self.channels, self.sample.max())?;
        Ok(self.values)
    }
}

/// Reads an image scaled to `[0, 1]` by its type's maximum (255 for 8-bit, 65535 for 16-bit
/// files; float TIFFs as stored), as [`read_image_with`] with [`Normalize::Scale`].
///
/// Returns `(values, channels, height, width)` with `values` channel-major `(C, H, W)`.
///
/// ```no_run
/// let (pixels, c, h, w) = unetpp::data::image_io::read_image("scan.png")?;
/// assert_eq!(pixels.len(), c * h * w);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn read_image(path: impl AsRef<Path>) -> Result<(Vec<f32>, usize, usize, usize)> {
    read_image_with(path, Normalize::Scale)
}

/// Reads an image ([`Image::read`]) and normalises it: `(values, channels, height, width)`.
///
/// ```no_run
/// use unetpp::data::{image_io::read_image_with, normalize::Normalize};
/// let (pixels, c, h, w) = read_image_with("dapi.tif", Normalize::MICROSCOPY)?;
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn read_image_with(
    path: impl AsRef<Path>,
    how: Normalize,
) -> Result<(Vec<f32>, usize, usize, usize)> {
    let image = Image::read(path)?;
    let (c, h, w) = (image.channels, image.height, image.width);
    Ok((image.into_normalized(how)?, c, h, w))
}

/// Reads a single-channel label mask as raw integers.
///
/// PNG: the grey level of a grey file (1 to 16 bits, unscaled) or the palette index of an
/// indexed one. TIFF: the grey level of an 8-, 16- or 32-bit unsigned (or non-negative
/// signed 32-bit) grey file. Returns `(values, height, width)`, row-major.
///
/// Colour, grey + alpha and floating-point files are errors naming the file: a mask must be
/// single-channel integers. So is a JPEG, whose lossy compression changes label values.
///
/// ```no_run
/// let (labels, h, w) = unetpp::data::image_io::read_mask("scan_mask.png")?;
/// assert_eq!(labels.len(), h * w);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn read_mask(path: impl AsRef<Path>) -> Result<(Vec<u32>, usize, usize)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    match sniff(path, &bytes)? {
        FileFormat::Png => png_mask::read(path, &bytes),
        FileFormat::Tiff => {
            if let Some(gray) = read_tiff_gray32(path, &bytes)? {
                use tiff::decoder::DecodingResult;
                let values = match gray.data {
                    DecodingResult::U32(v) => v,
                    DecodingResult::I32(v) => v
                        .into_iter()
                        .map(u32::try_from)
                        .collect::<std::result::Result<_, _>>()
                        .map_err(|_| invalid(path, "a label mask holds a negative value"))?,
                    _ => return Err(not_a_mask(path, "32-bit floating-point")),
                };
                return Ok((values, gray.height, gray.width));
            }
            let (h, w, values) = match decode(path, &bytes, FileFormat::Tiff)? {
                DynamicImage::ImageLuma8(m) => (m.height(), m.width(), to_u32(m.as_raw())),
                DynamicImage::ImageLuma16(m) => (m.height(), m.width(), to_u32(m.as_raw())),
                other => return Err(not_a_mask(path, &format!("{:?}", other.color()))),
            };
            Ok((values, h as usize, w as usize))
        }
        FileFormat::Jpeg => Err(invalid(
            path,
            "a mask cannot be a JPEG (lossy compression changes label values); \
             store masks as PNG or TIFF",
        )),
    }
}

/// Writes an 8-bit grey PNG (whatever the extension) from `width · height` row-major values.
///
/// ```
/// use unetpp::data::image_io::{read_mask, write_gray};
/// let path = std::env::temp_dir().join("unetpp-doc-write-gray.png");
/// write_gray(&path, &[0, 1, 2, 3, 4, 5], 3, 2)?;
/// assert_eq!(read_mask(&path)?, (vec![0, 1, 2, 3, 4, 5], 2, 3));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn write_gray(path: impl AsRef<Path>, data: &[u8], width: usize, height: usize) -> Result<()> {
    let path = path.as_ref();
    check_data(path, data.len(), width, height, 1, "8-bit grey")?;
    write_with_image(
        path,
        data,
        width,
        height,
        ExtendedColorType::L8,
        FileFormat::Png,
    )
}

/// Writes a 16-bit grey PNG (whatever the extension) from `width · height` row-major values.
pub fn write_gray16(
    path: impl AsRef<Path>,
    data: &[u16],
    width: usize,
    height: usize,
) -> Result<()> {
    write_gray16_as(path.as_ref(), data, width, height, FileFormat::Png)
}

/// Writes an 8-bit RGB PNG (whatever the extension) from `width · height` row-major pixels of
/// interleaved `r, g, b` (an overlay, say).
pub fn write_rgb(path: impl AsRef<Path>, data: &[u8], width: usize, height: usize) -> Result<()> {
    let path = path.as_ref();
    check_data(path, data.len(), width, height, 3, "RGB")?;
    write_with_image(
        path,
        data,
        width,
        height,
        ExtendedColorType::Rgb8,
        FileFormat::Png,
    )
}

/// Writes an 8-bit indexed PNG: `indices` holds `width · height` row-major palette indices,
/// each below `palette.len()` (at most 256 colours). [`read_mask`] reads the indices back,
/// [`read_image`] the colours; class masks are often stored this way so they can be viewed.
pub fn write_indexed(
    path: impl AsRef<Path>,
    indices: &[u8],
    palette: &[[u8; 3]],
    width: usize,
    height: usize,
) -> Result<()> {
    let path = path.as_ref();
    if palette.is_empty() || palette.len() > 256 {
        return Err(Error::Input(format!(
            "`{}`: a palette holds 1 to 256 colours, got {}",
            path.display(),
            palette.len()
        )));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i as usize >= palette.len()) {
        return Err(Error::Input(format!(
            "`{}`: palette index {bad} with only {} colours",
            path.display(),
            palette.len()
        )));
    }
    check_data(path, indices.len(), width, height, 1, "indexed")?;
    let (w, h) = dims_u32(path, width, height)?;
    write_atomically(path, |out| {
        let mut encoder = png::Encoder::new(out, w, h);
        encoder.set_color(png::ColorType::Indexed);
        encoder.set_depth(png::BitDepth::Eight);
        encoder.set_palette(palette.concat());
        let encoding = |e: png::EncodingError| io_error(path, e.into());
        let mut writer = encoder.write_header().map_err(encoding)?;
        writer.write_image_data(indices).map_err(encoding)?;
        writer.finish().map_err(encoding)
    })
}

/// Writes a 16-bit grey TIFF (whatever the extension) from `width · height` row-major values:
/// a 16-bit microscopy image, or a label mask of up to 65 535 instances.
///
/// ```
/// use unetpp::data::image_io::{read_mask, write_gray16_tiff};
/// let path = std::env::temp_dir().join("unetpp-doc-write-gray16.tif");
/// write_gray16_tiff(&path, &[0, 1, 40_000, 65535], 2, 2)?;
/// assert_eq!(read_mask(&path)?, (vec![0, 1, 40_000, 65535], 2, 2));
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn write_gray16_tiff(
    path: impl AsRef<Path>,
    data: &[u16],
    width: usize,
    height: usize,
) -> Result<()> {
    write_gray16_as(path.as_ref(), data, width, height, FileFormat::Tiff)
}

fn write_gray16_as(
    path: &Path,
    data: &[u16],
    width: usize,
    height: usize,
    format: FileFormat,
) -> Result<()> {
    check_data(path, data.len(), width, height, 1, "16-bit grey")?;
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_ne_bytes()).collect();
    write_with_image(path, &bytes, width, height, ExtendedColorType::L16, format)
}

/// Writes a 32-bit float grey TIFF (whatever the extension) from `width · height` row-major
/// values: a probability map, read back exactly by [`Image::read`] (or `tifffile`).
///
/// ```
/// use unetpp::data::image_io::{write_f32_tiff, Image};
/// let path = std::env::temp_dir().join("unetpp-doc-write-f32.tif");
/// write_f32_tiff(&path, &[0.0, 0.25, 0.5, 1.0], 4, 1)?;
/// assert_eq!(Image::read(&path)?.values, [0.0, 0.25, 0.5, 1.0]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn write_f32_tiff(
    path: impl AsRef<Path>,
    data: &[f32],
    width: usize,
    height: usize,
) -> Result<()> {
    let path = path.as_ref();
    check_data(path, data.len(), width, height, 1, "32-bit float grey")?;
    let (w, h) = dims_u32(path, width, height)?;
    write_atomically(path, |out| {
        let mut encoder = tiff::encoder::TiffEncoder::new(out).map_err(|e| tiff_error(path, e))?;
        encoder
            .write_image::<tiff::encoder::colortype::Gray32Float>(w, h, data)
            .map_err(|e| tiff_error(path, e))
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}

fn sniff(path: &Path, bytes: &[u8]) -> Result<FileFormat> {
    FileFormat::sniff(bytes).ok_or_else(|| {
        let what = if bytes.is_empty() {
            "the file is empty".to_string()
        } else {
            let hint = FileFormat::from_path(path)
                .map(|f| format!(" (despite its {f} extension)"))
                .unwrap_or_default();
            format!("not a PNG, TIFF or JPEG file{hint}")
        };
        unsupported(path, &what)
    })
}

/// The decoding limits: the sample count is checked before decoding, this bounds what
/// decoders allocate besides.
fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_DECODER_BYTES);
    limits
}

/// An image of `w × h × channels` samples must hold some and at most [`MAX_SAMPLES`].
fn check_size(path: &Path, w: u64, h: u64, channels: u64) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(invalid(path, &format!("the image is empty ({w}x{h})")));
    }
    if w.saturating_mul(h).saturating_mul(channels) > MAX_SAMPLES {
        return Err(io_error(
            path,
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!(
                    "a {w}x{h} image of {channels} channels is larger than the limit of \
                     {MAX_SAMPLES} samples"
                ),
            ),
        ));
    }
    Ok(())
}

fn decode(path: &Path, bytes: &[u8], format: FileFormat) -> Result<DynamicImage> {
    let image_format = match format {
        FileFormat::Png => ImageFormat::Png,
        FileFormat::Tiff => ImageFormat::Tiff,
        FileFormat::Jpeg => ImageFormat::Jpeg,
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    reader.limits(limits());
    let decoder = reader
        .into_decoder()
        .map_err(|e| image_error(path, format, e))?;
    let (w, h) = decoder.dimensions();
    let channels = decoder.color_type().channel_count();
    check_size(path, w.into(), h.into(), channels.into())?;
    DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, format, e))
}

/// The image of a decoded frame, `None` for colour types we do not read.
fn from_dynamic(image: DynamicImage) -> Option<Image> {
    use DynamicImage as D;
    let (h, w) = (image.height() as usize, image.width() as usize);
    let (values, channels, sample) = match &image {
        D::ImageLuma8(m) => (planar(m.as_raw(), 1, 1, h * w), 1, SampleType::U8),
        D::ImageLumaA8(m) => (planar(m.as_raw(), 2, 1, h * w), 1, SampleType::U8),
        D::ImageRgb8(m) => (planar(m.as_raw(), 3, 3, h * w), 3, SampleType::U8),
        D::ImageRgba8(m) => (planar(m.as_raw(), 4, 3, h * w), 3, SampleType::U8),
        D::ImageLuma16(m) => (planar(m.as_raw(), 1, 1, h * w), 1, SampleType::U16),
        D::ImageLumaA16(m) => (planar(m.as_raw(), 2, 1, h * w), 1, SampleType::U16),
        D::ImageRgb16(m) => (planar(m.as_raw(), 3, 3, h * w), 3, SampleType::U16),
        D::ImageRgba16(m) => (planar(m.as_raw(), 4, 3, h * w), 3, SampleType::U16),
        D::ImageRgb32F(m) => (planar(m.as_raw(), 3, 3, h * w), 3, SampleType::F32),
        D::ImageRgba32F(m) => (planar(m.as_raw(), 4, 3, h * w), 3, SampleType::F32),
        _ => return None,
    };
    Some(Image {
        values,
        channels,
        height: h,
        width: w,
        sample,
    })
}

/// The first `keep` of every `stride` interleaved samples, channel-major.
fn planar<T: Copy + Into<f32>>(raw: &[T], stride: usize, keep: usize, plane: usize) -> Vec<f32> {
    let mut out = vec![0f32; keep * plane];
    for (p, pixel) in raw.chunks_exact(stride).take(plane).enumerate() {
        for (c, &v) in pixel[..keep].iter().enumerate() {
            out[c * plane + p] = v.into();
        }
    }
    out
}

fn to_u32<T: Copy + Into<u32>>(raw: &[T]) -> Vec<u32> {
    raw.iter().map(|&v| v.into()).collect()
}

/// A 32-bit grey TIFF frame, decoded by `tiff` (`image` reads no 32-bit grey).
struct Gray32 {
    data: tiff::decoder::DecodingResult,
    height: usize,
    width: usize,
}

/// The first image of a TIFF if it is 32-bit grey, `None` if it is anything else; either
/// way, an error if its data reaches past the end of the file (a TIFF cut short in its last
/// strip can otherwise decode without complaint, its checksum being ignored).
fn read_tiff_gray32(path: &Path, bytes: &[u8]) -> Result<Option<Gray32>> {
    use tiff::tags::Tag;
    let err = |e| tiff_error(path, e);
    let mut tiff_limits = tiff::decoder::Limits::default();
    tiff_limits.decoding_buffer_size = usize::try_from(MAX_DECODER_BYTES).unwrap_or(usize::MAX);
    let mut decoder = tiff::decoder::Decoder::new(Cursor::new(bytes))
        .map_err(err)?
        .with_limits(tiff_limits);
    let (offsets, counts) = match decoder.get_chunk_type() {
        tiff::decoder::ChunkType::Strip => (Tag::StripOffsets, Tag::StripByteCounts),
        tiff::decoder::ChunkType::Tile => (Tag::TileOffsets, Tag::TileByteCounts),
    };
    // Missing tags are left to the decoder to complain about (or infer, for byte counts).
    let offsets: Vec<u64> = decoder
        .find_tag_unsigned_vec(offsets)
        .map_err(err)?
        .unwrap_or_default();
    let counts: Vec<u64> = decoder
        .find_tag_unsigned_vec(counts)
        .map_err(err)?
        .unwrap_or_default();
    let end = offsets
        .iter()
        .zip(&counts)
        .map(|(&o, &c)| o.saturating_add(c))
        .max()
        .unwrap_or(0);
    if end > bytes.len() as u64 {
        return Err(truncated(path, FileFormat::Tiff));
    }
    if decoder.colortype().map_err(err)? != tiff::ColorType::Gray(32) {
        return Ok(None);
    }
    let (w, h) = decoder.dimensions().map_err(err)?;
    check_size(path, w.into(), h.into(), 1)?;
    let data = decoder.read_image().map_err(err)?;
    let (height, width) = (h as usize, w as usize);
    let len = match &data {
        tiff::decoder::DecodingResult::U32(v) => v.len(),
        tiff::decoder::DecodingResult::I32(v) => v.len(),
        tiff::decoder::DecodingResult::F32(v) => v.len(),
        _ => return Err(unsupported(path, "unsupported 32-bit sample format")),
    };
    if len != height * width {
        return Err(invalid(
            path,
            "decoded image is shorter than its header says",
        ));
    }
    Ok(Some(Gray32 {
        data,
        height,
        width,
    }))
}

/// Whether a JPEG's markers run to its end-of-image marker. `image` (zune-jpeg, not strict)
/// decodes a JPEG cut short in its pixel data without complaint, so we check that the data
/// is all there.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    const SOS: u8 = 0xDA;
    const EOI: u8 = 0xD9;
    let mut at = 2; // after SOI
    while at + 1 < bytes.len() {
        if bytes[at] != 0xFF {
            return false;
        }
        let marker = bytes[at + 1];
        match marker {
            EOI => return true,
            // Fill bytes before a marker, and markers without a length (TEM, RSTn).
            0xFF => at += 1,
            0x01 | 0xD0..=0xD7 => at += 2,
            _ => {
                let Some(len) = bytes.get(at + 2..at + 4) else {
                    return false;
                };
                at += 2 + u16::from_be_bytes([len[0], len[1]]) as usize;
                if marker == SOS {
                    // Entropy-coded data: a 0xFF in it is followed by 0 (a stuffed byte) or
                    // a restart marker; anything else is the next marker.
                    let is_marker = |at: usize| {
                        bytes[at] == 0xFF && !matches!(bytes[at + 1], 0x00 | 0xD0..=0xD7)
                    };
                    while at + 1 < bytes.len() && !is_marker(at) {
                        at += 1;
                    }
                }
            }
        }
    }
    false
}

/// Reading mask PNGs with the `png` crate, unexpanded: palette indices stay indices and low
/// bit depths stay their raw levels.
mod png_mask {
    use std::io::{self, Cursor};
    use std::path::Path;

    use png::{BitDepth, ColorType, Transformations};

    use super::{check_size, invalid, io_error, not_a_mask, truncated, FileFormat};
    use crate::Result;

    pub(super) fn read(path: &Path, bytes: &[u8]) -> Result<(Vec<u32>, usize, usize)> {
        let limits = png::Limits {
            bytes: usize::try_from(super::MAX_DECODER_BYTES).unwrap_or(usize::MAX),
        };
        let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
        decoder.set_transformations(Transformations::IDENTITY);
        let mut reader = decoder.read_info().map_err(|e| decoding(path, e))?;
        let (color, depth) = reader.output_color_type();
        if !matches!(color, ColorType::Grayscale | ColorType::Indexed) {
            return Err(not_a_mask(path, &format!("{color:?}")));
        }
        let info = reader.info();
        let (width, height) = (info.width as usize, info.height as usize);
        check_size(path, width as u64, height as u64, 1)?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| invalid(path, "image is too large to decode"))?;
        let mut buffer = vec![0u8; size];
        let frame = reader
            .next_frame(&mut buffer)
            .map_err(|e| decoding(path, e))?;
        samples(path, &buffer, frame.line_size, depth, width, height)
            .map(|values| (values, height, width))
    }

    /// Every sample of a single-channel frame as an integer, row-major, the padding of
    /// sub-byte rows removed.
    fn samples(
        path: &Path,
        bytes: &[u8],
        line_size: usize,
        depth: BitDepth,
        width: usize,
        height: usize,
    ) -> Result<Vec<u32>> {
        let bits = depth as usize;
        if line_size < (width * bits).div_ceil(8) || bytes.len() < line_size * height {
            return Err(invalid(
                path,
                "decoded frame is shorter than its header says",
            ));
        }
        let mut out = Vec::with_capacity(width * height);
        for row in bytes.chunks_exact(line_size).take(height) {
            match depth {
                BitDepth::Sixteen => out.extend(
                    row.chunks_exact(2)
                        .take(width)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]) as u32),
                ),
                BitDepth::Eight => out.extend(row[..width].iter().map(|&b| b as u32)),
                _ => {
                    let mask = (1u32 << bits) - 1;
                    // Sub-byte samples are packed most significant bits first.
                    out.extend((0..width).map(|i| {
                        let byte = row[i * bits / 8] as u32;
                        (byte >> (8 - bits - (i * bits) % 8)) & mask
                    }));
                }
            }
        }
        Ok(out)
    }

    fn decoding(path: &Path, err: png::DecodingError) -> crate::Error {
        match err {
            png::DecodingError::IoError(source)
                if source.kind() == io::ErrorKind::UnexpectedEof =>
            {
                truncated(path, FileFormat::Png)
            }
            png::DecodingError::IoError(source) => io_error(path, source),
            png::DecodingError::LimitsExceeded => io_error(
                path,
                io::Error::new(io::ErrorKind::OutOfMemory, "image is too large to decode"),
            ),
            other => invalid(path, &format!("not a readable PNG: {other}")),
        }
    }
}

/// `width · height · channels` values are expected, and at least one.
fn check_data(
    path: &Path,
    len: usize,
    width: usize,
    height: usize,
    channels: usize,
    what: &str,
) -> Result<()> {
    let expected = width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels));
    if expected != Some(len) || len == 0 {
        return Err(Error::Shape(format!(
            "`{}`: a {width}x{height} {what} image needs {} values, got {len}",
            path.display(),
            expected.map_or("too many".to_string(), |n| n.to_string()),
        )));
    }
    Ok(())
}

fn dims_u32(path: &Path, width: usize, height: usize) -> Result<(u32, u32)> {
    u32::try_from(width)
        .ok()
        .zip(u32::try_from(height).ok())
        .ok_or_else(|| {
            Error::Shape(format!(
                "`{}`: {width}x{height} is too large for an image file",
                path.display()
            ))
        })
}

fn write_with_image(
    path: &Path,
    bytes: &[u8],
    width: usize,
    height: usize,
    color: ExtendedColorType,
    format: FileFormat,
) -> Result<()> {
    let (w, h) = dims_u32(path, width, height)?;
    write_atomically(path, |out| {
        let written = match format {
            FileFormat::Tiff => TiffEncoder::new(out).write_image(bytes, w, h, color),
            _ => PngEncoder::new(out).write_image(bytes, w, h, color),
        };
        written.map_err(|e| image_error(path, format, e))
    })
}

/// Writes `path` through a temporary file beside it (flushed to disk, then renamed over it),
/// so that an interrupted write leaves the old file intact; the temporary file is removed on
/// failure. Its name starts with a dot and ends in `.tmp`, so folder listings skip it.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<&mut File>) -> Result<()>,
) -> Result<()> {
    crate::fsio::atomic_write(path, |file| {
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        out.flush().map_err(|source| io_error(path, source))
    })
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: PathBuf::from(path),
        source,
    }
}

fn invalid(path: &Path, msg: &str) -> Error {
    io_error(path, io::Error::new(io::ErrorKind::InvalidData, msg))
}

fn unsupported(path: &Path, msg: &str) -> Error {
    io_error(path, io::Error::new(io::ErrorKind::Unsupported, msg))
}

fn truncated(path: &Path, format: FileFormat) -> Error {
    io_error(
        path,
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{format} ends early (truncated file?)"),
        ),
    )
}

fn not_a_mask(path: &Path, found: &str) -> Error {
    invalid(
        path,
        &format!("a mask must be single-channel integers (grey or indexed), this file is {found}"),
    )
}

fn image_error(path: &Path, format: FileFormat, err: ImageError) -> Error {
    match err {
        ImageError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            truncated(path, format)
        }
        ImageError::IoError(source) => io_error(path, source),
        ImageError::Limits(e) => io_error(
            path,
            io::Error::new(io::ErrorKind::OutOfMemory, format!("image too large: {e}")),
        ),
        ImageError::Unsupported(e) => unsupported(path, &format!("unsupported {format}: {e}")),
        ImageError::Parameter(e) => io_error(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
        ),
        other => invalid(path, &format!("not a readable {format}: {other}")),
    }
}

fn tiff_error(path: &Path, err: tiff::TiffError) -> Error {
    match err {
        tiff::TiffError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            truncated(path, FileFormat::Tiff)
        }
        tiff::TiffError::IoError(source) => io_error(path, source),
        tiff::TiffError::LimitsExceeded => io_error(
            path,
            io::Error::new(io::ErrorKind::OutOfMemory, "image is too large to decode"),
        ),
        tiff::TiffError::UnsupportedError(e) => {
            unsupported(path, &format!("unsupported TIFF: {e}"))
        }
        other => invalid(path, &format!("not a readable TIFF: {other}")),
    }
}
