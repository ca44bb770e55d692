//! Reading and writing PNG images and label masks.
//!
//! Images are read into `f32` values in `[0, 1]`, channel-major `(C, H, W)` like
//! [`Sample::image`](super::Sample::image); masks are read as the raw integer stored in each
//! pixel (the grey level, or the palette index of an indexed PNG), so a class-index mask
//! reads back exactly as it was written. Every error names the file it happened on.

use std::fs::File;
use std::io::{self, BufReader, BufWriter};
use std::path::Path;

use png::{BitDepth, ColorType, Transformations};

use crate::{Error, Result};

/// The largest decoded frame we agree to allocate (4 GiB): a corrupt header must not make
/// us try to allocate whatever size it claims.
const MAX_FRAME_BYTES: usize = u32::MAX as usize;

/// Reads an image PNG: 1-, 2-, 4-, 8- or 16-bit grey, grey + alpha, RGB, RGBA or indexed.
///
/// Returns `(values, channels, height, width)` with `values` channel-major `(C, H, W)` and
/// scaled to `[0, 1]` (by 255, or 65535 for 16-bit files). Grey images give one channel,
/// colour and indexed images three (palettes are looked up); alpha is dropped.
///
/// ```no_run
/// let (pixels, c, h, w) = unetpp::data::png_io::read_image("scan.png")?;
/// assert_eq!(pixels.len(), c * h * w);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn read_image(path: impl AsRef<Path>) -> Result<(Vec<f32>, usize, usize, usize)> {
    let path = path.as_ref();
    let frame = decode(path, Transformations::EXPAND)?;
    let (stored, alpha) = match frame.color {
        ColorType::Grayscale => (1, 0),
        ColorType::GrayscaleAlpha => (1, 1),
        ColorType::Rgb => (3, 0),
        ColorType::Rgba => (3, 1),
        ColorType::Indexed => {
            return Err(invalid(path, "palette was not expanded to RGB"));
        }
    };
    let samples = frame.samples(path)?;
    let (h, w) = (frame.height, frame.width);
    let max = match frame.depth {
        BitDepth::Sixteen => 65535.0,
        _ => 255.0,
    };
    let mut image = vec![0f32; stored * h * w];
    let pixel_len = stored + alpha;
    for (p, pixel) in samples.chunks_exact(pixel_len).enumerate() {
        for (c, &v) in pixel[..stored].iter().enumerate() {
            image[c * h * w + p] = v as f32 / max;
        }
    }
    Ok((image, stored, h, w))
}

/// Reads a single-channel label mask PNG as raw integers: the grey level of a grey PNG (1 to
/// 16 bits, unscaled), or the palette index of an indexed PNG.
///
/// Returns `(values, height, width)`, row-major. Colour and grey + alpha files are an error:
/// a mask must be single-channel.
///
/// ```no_run
/// let (labels, h, w) = unetpp::data::png_io::read_mask("scan_mask.png")?;
/// assert_eq!(labels.len(), h * w);
/// # Ok::<(), unetpp::Error>(())
/// ```
pub fn read_mask(path: impl AsRef<Path>) -> Result<(Vec<u32>, usize, usize)> {
    let path = path.as_ref();
    // No transformation: expanding would turn palette indices into colours and scale
    // low-bit grey levels to 0..=255.
    let frame = decode(path, Transformations::IDENTITY)?;
    match frame.color {
        ColorType::Grayscale | ColorType::Indexed => {}
        other => {
            return Err(invalid(
                path,
                &format!("a mask must be single-channel (grey or indexed), this file is {other:?}"),
            ))
        }
    }
    let values = frame.samples(path)?;
    Ok((values, frame.height, frame.width))
}

/// Writes an 8-bit grey PNG from `width · height` row-major values.
pub fn write_gray(path: impl AsRef<Path>, data: &[u8], width: usize, height: usize) -> Result<()> {
    encode(
        path.as_ref(),
        data,
        width,
        height,
        ColorType::Grayscale,
        BitDepth::Eight,
        None,
    )
}

/// Writes a 16-bit grey PNG from `width · height` row-major values.
pub fn write_gray16(
    path: impl AsRef<Path>,
    data: &[u16],
    width: usize,
    height: usize,
) -> Result<()> {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_be_bytes()).collect();
    encode(
        path.as_ref(),
        &bytes,
        width,
        height,
        ColorType::Grayscale,
        BitDepth::Sixteen,
        None,
    )
}

/// Writes an 8-bit RGB PNG from `width · height` row-major pixels of interleaved `r, g, b`.
pub fn write_rgb(path: impl AsRef<Path>, data: &[u8], width: usize, height: usize) -> Result<()> {
    encode(
        path.as_ref(),
        data,
        width,
        height,
        ColorType::Rgb,
        BitDepth::Eight,
        None,
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
    encode(
        path,
        indices,
        width,
        height,
        ColorType::Indexed,
        BitDepth::Eight,
        Some(palette.concat()),
    )
}

/// A decoded frame, still in the file's byte layout.
struct Frame {
    bytes: Vec<u8>,
    line_size: usize,
    color: ColorType,
    depth: BitDepth,
    height: usize,
    width: usize,
}

impl Frame {
    /// Every sample of the frame as an integer, row-major, channels interleaved, the padding
    /// of sub-byte rows removed.
    fn samples(&self, path: &Path) -> Result<Vec<u32>> {
        let bits = self.depth as usize;
        let per_row = self.color.samples() * self.width;
        if self.line_size < (per_row * bits).div_ceil(8)
            || self.bytes.len() < self.line_size * self.height
        {
            return Err(invalid(
                path,
                "decoded frame is shorter than its header says",
            ));
        }
        let rows = self.bytes.chunks_exact(self.line_size).take(self.height);
        let mut out = Vec::with_capacity(per_row * self.height);
        for row in rows {
            match self.depth {
                BitDepth::Sixteen => out.extend(
                    row.chunks_exact(2)
                        .take(per_row)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]) as u32),
                ),
                BitDepth::Eight => out.extend(row[..per_row].iter().map(|&b| b as u32)),
                _ => {
                    let mask = (1u32 << bits) - 1;
                    // Sub-byte samples are packed most significant bits first.
                    out.extend((0..per_row).map(|i| {
                        let byte = row[i * bits / 8] as u32;
                        (byte >> (8 - bits - (i * bits) % 8)) & mask
                    }));
                }
            }
        }
        Ok(out)
    }
}

fn decode(path: &Path, transformations: Transformations) -> Result<Frame> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(transformations);
    let mut reader = decoder.read_info().map_err(|e| decoding(path, e))?;
    let size = reader
        .output_buffer_size()
        .filter(|&n| n <= MAX_FRAME_BYTES)
        .ok_or_else(|| invalid(path, "image is too large to decode"))?;
    let mut bytes = vec![0u8; size];
    let info = reader
        .next_frame(&mut bytes)
        .map_err(|e| decoding(path, e))?;
    bytes.truncate(info.buffer_size());
    Ok(Frame {
        bytes,
        line_size: info.line_size,
        color: info.color_type,
        depth: info.bit_depth,
        height: info.height as usize,
        width: info.width as usize,
    })
}

fn encode(
    path: &Path,
    data: &[u8],
    width: usize,
    height: usize,
    color: ColorType,
    depth: BitDepth,
    palette: Option<Vec<u8>>,
) -> Result<()> {
    let expected = width * height * color.samples() * (depth as usize / 8);
    if data.len() != expected {
        return Err(Error::Shape(format!(
            "`{}`: a {width}x{height} {color:?} image of depth {} needs {expected} bytes, got {}",
            path.display(),
            depth as u8,
            data.len()
        )));
    }
    let dims = u32::try_from(width).ok().zip(u32::try_from(height).ok());
    let (w, h) = dims.ok_or_else(|| {
        Error::Shape(format!(
            "`{}`: {width}x{height} is too large for a PNG",
            path.display()
        ))
    })?;
    let file = File::create(path).map_err(|source| io_error(path, source))?;
    let mut encoder = png::Encoder::new(BufWriter::new(file), w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    if let Some(palette) = palette {
        encoder.set_palette(palette);
    }
    let encoding = |e: png::EncodingError| io_error(path, e.into());
    let mut writer = encoder.write_header().map_err(encoding)?;
    writer.write_image_data(data).map_err(encoding)?;
    writer.finish().map_err(encoding)
}

fn io_error(path: &Path, source: io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, msg: &str) -> Error {
    io_error(path, io::Error::new(io::ErrorKind::InvalidData, msg))
}

fn decoding(path: &Path, err: png::DecodingError) -> Error {
    match err {
        png::DecodingError::IoError(source) if source.kind() == io::ErrorKind::UnexpectedEof => {
            io_error(
                path,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "PNG ends early (truncated file?)",
                ),
            )
        }
        png::DecodingError::IoError(source) => io_error(path, source),
        other => invalid(path, &format!("not a readable PNG: {other}")),
    }
}
