//! Data sets, image I/O (PNG, TIFF, JPEG), normalisation and the data loader.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How far our JPEG decoding (zune-jpeg, through `image`) may be from Pillow's (libjpeg-turbo),
/// in 8-bit grey levels: the largest difference of a sample, and the mean. The two differ in
/// rounding and, for 4:2:0 chroma, up-sampling: measured 2 and 0.011 (4:4:4), 4 and 0.36
/// (4:2:0), 1 and 0.016 (grey).
const MAX_JPEG_DIFF: f32 = 6.0;
const MEAN_JPEG_DIFF: f32 = 0.75;

use candle_core::{DType, Device};
use unetpp::data::folder::{ImageFolder, MaskEncoding};
use unetpp::data::image_io::{
    read_image, read_image_with, read_mask, write_f32_tiff, write_gray, write_gray16,
    write_gray16_tiff, write_indexed, write_rgb, FileFormat, Image, SampleType, MAX_SAMPLES,
};
use unetpp::data::loader::{hflip, rot90, vflip, Augment, DataLoader};
use unetpp::data::normalize::{percentile, Normalize};
use unetpp::data::synthetic::{Shape, SyntheticConfig, SyntheticConfigBuilder, SyntheticDataset};
use unetpp::data::{Dataset, Sample};
use unetpp::{Error, Result};

/// A fresh, empty folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "unetpp-data-{name}-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn sub(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn small_config() -> SyntheticConfigBuilder {
    SyntheticConfig::builder()
        .samples(16)
        .height(32)
        .width(32)
        .seed(11)
}

fn synthetic(cfg: SyntheticConfigBuilder) -> SyntheticDataset {
    SyntheticDataset::new(cfg.build().unwrap()).unwrap()
}

fn config_field(err: Error) -> &'static str {
    match err {
        Error::Config { field, .. } => field,
        other => panic!("expected a config error, got {other}"),
    }
}

fn assert_names(err: &Error, path: &Path) {
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        err.to_string().contains(name.as_ref()),
        "error `{err}` does not name `{name}`"
    );
}

#[test]
fn synthetic_same_seed_gives_identical_samples() {
    let a = synthetic(small_config());
    let b = synthetic(small_config());
    for i in 0..a.len() {
        assert_eq!(a.get(i).unwrap(), b.get(i).unwrap());
    }
}

#[test]
fn synthetic_different_seed_gives_different_samples() {
    let a = synthetic(small_config());
    let b = synthetic(small_config().seed(12));
    for i in 0..a.len() {
        assert_ne!(a.get(i).unwrap(), b.get(i).unwrap());
    }
}

#[test]
fn synthetic_sample_does_not_depend_on_fetch_order() {
    let data = synthetic(small_config());
    let forward: Vec<Sample> = (0..data.len()).map(|i| data.get(i).unwrap()).collect();
    let backward: Vec<Sample> = (0..data.len())
        .rev()
        .map(|i| data.get(i).unwrap())
        .collect();
    for (i, s) in forward.iter().enumerate() {
        assert_eq!(s, &backward[data.len() - 1 - i]);
    }
    assert_ne!(forward[0], forward[1]);
}

#[test]
fn synthetic_objects_vary_widely_in_size() {
    // One object per image, so the foreground area is the object's area.
    let single = synthetic(SyntheticConfig::builder().samples(200).objects(1..=1));
    let areas: Vec<usize> = (0..single.len())
        .map(|i| {
            single
                .get(i)
                .unwrap()
                .mask
                .iter()
                .filter(|&&c| c > 0)
                .count()
        })
        .collect();
    assert!(areas.iter().any(|&a| a > 0 && a < 30), "no small object");
    assert!(areas.iter().any(|&a| a > 400), "no large object");

    let data = synthetic(SyntheticConfig::builder());
    let non_empty = (0..data.len())
        .filter(|&i| data.get(i).unwrap().mask.iter().any(|&c| c > 0))
        .count();
    assert!(
        non_empty * 10 >= data.len() * 9,
        "{non_empty} non-empty masks"
    );
}

#[test]
fn synthetic_multiclass_labels_are_in_range_and_all_present() {
    let data = synthetic(small_config().num_classes(5));
    assert_eq!(data.num_classes(), 5);
    let mut seen = [false; 5];
    for i in 0..data.len() {
        for &c in &data.get(i).unwrap().mask {
            assert!(c < 5, "label {c}");
            seen[c as usize] = true;
        }
    }
    assert_eq!(seen, [true; 5]);
    assert_eq!(Shape::of_class(0), None);
    assert_eq!(Shape::of_class(1), Some(Shape::Ellipse));
    assert_eq!(Shape::of_class(6), Some(Shape::Ellipse));
}

#[test]
fn synthetic_binary_masks_hold_zero_and_one() {
    let data = synthetic(small_config());
    for i in 0..data.len() {
        assert!(data.get(i).unwrap().mask.iter().all(|&c| c <= 1));
    }
}

#[test]
fn synthetic_images_lie_in_unit_interval_without_noise() {
    let data = synthetic(small_config().channels(3).noise_std(0.0).contrast(1.0));
    assert_eq!(data.channels(), 3);
    for i in 0..data.len() {
        let s = data.get(i).unwrap();
        assert_eq!(s.image.len(), 3 * 32 * 32);
        assert!(s.image.iter().all(|&v| (-1e-5..=1.0 + 1e-5).contains(&v)));
    }
}

#[test]
fn synthetic_rejects_nonsense_configs() {
    let bad = |cfg: SyntheticConfigBuilder| config_field(cfg.build().unwrap_err());
    let base = small_config;
    assert_eq!(bad(base().samples(0)), "samples");
    assert_eq!(bad(base().height(7)), "height");
    assert_eq!(bad(base().width(4)), "width");
    assert_eq!(bad(base().num_classes(1)), "num_classes");
    assert_eq!(bad(base().channels(2)), "channels");
    #[allow(clippy::reversed_empty_ranges)]
    let objects = 3..=2;
    assert_eq!(bad(base().objects(objects)), "objects");
    assert_eq!(bad(base().objects(0..=0)), "objects");
    assert_eq!(bad(base().min_radius(0.0)), "min_radius");
    let inverted = base().min_radius(6.0).max_radius(Some(3.0));
    assert_eq!(bad(inverted), "max_radius");
    assert_eq!(bad(base().blur_sigma(-1.0)), "blur_sigma");
    assert_eq!(bad(base().noise_std(f32::NAN)), "noise_std");
    assert_eq!(bad(base().contrast(0.0)), "contrast");
}

#[test]
fn synthetic_config_round_trips_through_its_builder() {
    let cfg = small_config().max_radius(5.0).build().unwrap();
    assert_eq!(cfg.to_builder().build().unwrap(), cfg);
    assert_eq!(
        (cfg.samples(), cfg.height(), cfg.width(), cfg.seed()),
        (16, 32, 32, 11)
    );
    assert_eq!((cfg.objects(), cfg.max_radius()), (2..=8, Some(5.0)));
    assert_eq!(synthetic(cfg.to_builder()).config(), &cfg);
}

#[test]
fn synthetic_index_out_of_range_is_an_error() {
    let data = synthetic(small_config());
    assert!(data.get(16).is_err());
}

#[test]
fn png_gray_round_trip() {
    let dir = TempDir::new("gray");
    let path = dir.0.join("g.png");
    let values: Vec<u8> = (0..15).map(|v| v * 17).collect();
    write_gray(&path, &values, 5, 3).unwrap();
    let (image, c, h, w) = read_image(&path).unwrap();
    assert_eq!((c, h, w), (1, 3, 5));
    let expected: Vec<f32> = values.iter().map(|&v| v as f32 / 255.0).collect();
    assert_eq!(image, expected);
    let (mask, h, w) = read_mask(&path).unwrap();
    assert_eq!((h, w), (3, 5));
    assert_eq!(mask, values.iter().map(|&v| v as u32).collect::<Vec<_>>());
}

#[test]
fn png_rgb_round_trip_is_channel_major() {
    let dir = TempDir::new("rgb");
    let path = dir.0.join("c.png");
    // Two pixels: pure red, then pure blue.
    write_rgb(&path, &[255, 0, 0, 0, 0, 255], 2, 1).unwrap();
    let (image, c, h, w) = read_image(&path).unwrap();
    assert_eq!((c, h, w), (3, 1, 2));
    assert_eq!(image, vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
}

#[test]
fn png_gray16_round_trip() {
    let dir = TempDir::new("gray16");
    let path = dir.0.join("d.png");
    let values = [0u16, 1, 300, 65535];
    write_gray16(&path, &values, 2, 2).unwrap();
    let (image, c, h, w) = read_image(&path).unwrap();
    assert_eq!((c, h, w), (1, 2, 2));
    let expected: Vec<f32> = values.iter().map(|&v| v as f32 / 65535.0).collect();
    assert_eq!(image, expected);
    let (mask, _, _) = read_mask(&path).unwrap();
    assert_eq!(mask, vec![0, 1, 300, 65535]);
}

#[test]
fn png_palette_reads_as_colours_for_images_and_indices_for_masks() {
    let dir = TempDir::new("palette");
    let path = dir.0.join("p.png");
    let palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]];
    write_indexed(&path, &[0, 1, 2, 1], &palette, 4, 1).unwrap();
    let (mask, h, w) = read_mask(&path).unwrap();
    assert_eq!((mask, h, w), (vec![0, 1, 2, 1], 1, 4));
    let (image, c, _, _) = read_image(&path).unwrap();
    assert_eq!(c, 3);
    assert_eq!(
        image,
        vec![0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    );
    let err = write_indexed(&path, &[3], &palette, 1, 1).unwrap_err();
    assert_names(&err, &path);
}

/// Writes a PNG with the `png` crate directly, for formats the crate does not write.
fn write_raw(
    path: &Path,
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    data: &[u8],
) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, w, h);
    encoder.set_color(color);
    encoder.set_depth(depth);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

#[test]
fn png_low_bit_depth_grey_reads_raw_masks_and_scaled_images() {
    let dir = TempDir::new("lowbit");
    let path = dir.0.join("two_bit.png");
    // 2-bit grey, 5 pixels per row (rows padded to 2 bytes): 0 1 2 3 1 / 3 2 1 0 2.
    let rows = [0b0001_1011, 0b0100_0000, 0b1110_0100, 0b1000_0000];
    write_raw(
        &path,
        5,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Two,
        &rows,
    );
    let (mask, h, w) = read_mask(&path).unwrap();
    assert_eq!((h, w), (2, 5));
    assert_eq!(mask, vec![0, 1, 2, 3, 1, 3, 2, 1, 0, 2]);
    let (image, _, _, _) = read_image(&path).unwrap();
    let expected: Vec<f32> = mask.iter().map(|&v| (v * 85) as f32 / 255.0).collect();
    assert_eq!(image, expected);
}

#[test]
fn png_alpha_is_dropped() {
    let dir = TempDir::new("alpha");
    let ga = dir.0.join("ga.png");
    write_raw(
        &ga,
        2,
        1,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &[255, 7, 0, 9],
    );
    let (image, c, _, _) = read_image(&ga).unwrap();
    assert_eq!((image, c), (vec![1.0, 0.0], 1));
    let rgba = dir.0.join("rgba.png");
    write_raw(
        &rgba,
        1,
        1,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &[0, 255, 0, 3],
    );
    let (image, c, _, _) = read_image(&rgba).unwrap();
    assert_eq!((image, c), (vec![0.0, 1.0, 0.0], 3));
    assert_names(&read_mask(&ga).unwrap_err(), &ga);
}

#[test]
fn png_rgb_mask_is_an_error_naming_the_file() {
    let dir = TempDir::new("rgbmask");
    let path = dir.0.join("colour_mask.png");
    write_rgb(&path, &[0; 12], 2, 2).unwrap();
    let err = read_mask(&path).unwrap_err();
    assert_names(&err, &path);
    assert!(err.to_string().contains("single-channel"), "{err}");
}

#[test]
fn png_unreadable_files_are_errors_naming_them() {
    let dir = TempDir::new("garbage");
    let garbage = dir.0.join("x.png");
    std::fs::write(&garbage, b"this is not a png at all").unwrap();
    assert_names(&read_image(&garbage).unwrap_err(), &garbage);
    assert_names(&read_mask(&garbage).unwrap_err(), &garbage);

    let truncated = dir.0.join("truncated.png");
    write_gray(&truncated, &[100; 64 * 64], 64, 64).unwrap();
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_names(&read_image(&truncated).unwrap_err(), &truncated);

    let missing = dir.0.join("missing.png");
    assert_names(&read_image(&missing).unwrap_err(), &missing);

    let err = write_gray(dir.0.join("short.png"), &[0; 3], 2, 2).unwrap_err();
    assert!(err.to_string().contains("short.png"), "{err}");
}

/// Writes `images/{name}.png` (RGB, `v` in every pixel) and its grey mask under
/// `masks/{mask_name}.png`.
fn write_pair(dir: &TempDir, name: &str, mask_name: &str, v: u8, mask: &[u8], w: usize, h: usize) {
    write_rgb(
        dir.sub("images").join(format!("{name}.png")),
        &vec![v; 3 * w * h],
        w,
        h,
    )
    .unwrap();
    write_gray(
        dir.sub("masks").join(format!("{mask_name}.png")),
        mask,
        w,
        h,
    )
    .unwrap();
}

fn three_pairs(name: &str) -> TempDir {
    let dir = TempDir::new(name);
    let mask = [0, 255, 255, 0, 0, 0, 255, 0, 0, 0, 0, 0];
    write_pair(&dir, "a", "a", 10, &mask, 4, 3);
    write_pair(&dir, "b", "b_mask", 20, &mask, 4, 3);
    write_pair(&dir, "c", "c", 30, &[2; 12], 4, 3);
    dir
}

#[test]
fn folder_pairs_files_by_stem_and_batches_through_the_loader() {
    let dir = three_pairs("happy");
    let data =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_eq!((data.len(), data.channels(), data.num_classes()), (3, 3, 2));
    let names: Vec<_> = data
        .pairs()
        .iter()
        .map(|(i, m)| {
            (
                i.file_name().unwrap().to_owned(),
                m.file_name().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(names[1], ("b.png".into(), "b_mask.png".into()));

    let b = data.get(1).unwrap();
    assert_eq!((b.channels, b.height, b.width), (3, 3, 4));
    assert!(b.image.iter().all(|&v| v == 20.0 / 255.0));
    assert_eq!(b.mask, vec![0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]);
    assert!(data.get(2).unwrap().mask.iter().all(|&c| c == 1));
    assert!(data.get(3).is_err());

    let loader = DataLoader::new(data, 2).unwrap();
    let batches: Vec<_> = loader
        .batches(0, &Device::Cpu)
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].images.dims(), &[2, 3, 3, 4]);
    assert_eq!(batches[1].labels.dims(), &[1, 3, 4]);
}

#[test]
fn folder_class_index_masks_read_as_labels() {
    let dir = three_pairs("classes");
    let data = ImageFolder::open(
        dir.sub("images"),
        dir.sub("masks"),
        MaskEncoding::ClassIndex { num_classes: 3 },
    )
    .unwrap();
    assert_eq!(data.num_classes(), 3);
    assert_eq!(data.get(2).unwrap().mask, vec![2; 12]);
}

#[test]
fn folder_mask_value_at_or_above_num_classes_is_an_error() {
    let dir = three_pairs("toobig");
    let data = ImageFolder::open(
        dir.sub("images"),
        dir.sub("masks"),
        MaskEncoding::ClassIndex { num_classes: 2 },
    )
    .unwrap();
    let err = data.get(2).unwrap_err();
    assert_names(&err, &dir.sub("masks").join("c.png"));
    assert!(err.to_string().contains("value 2"), "{err}");
    // The 0/255 mask of `a` holds 255.
    assert!(data.get(0).unwrap_err().to_string().contains("255"));
}

#[test]
fn folder_image_without_mask_is_an_error_naming_it() {
    let dir = three_pairs("nomask");
    let lonely = dir.sub("images").join("lonely.png");
    write_gray(&lonely, &[0; 4], 2, 2).unwrap();
    let err =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &lonely);
}

#[test]
fn folder_mask_without_image_is_an_error_naming_it() {
    let dir = three_pairs("noimage");
    let orphan = dir.sub("masks").join("orphan_mask.png");
    write_gray(&orphan, &[0; 4], 2, 2).unwrap();
    let err =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &orphan);
}

#[test]
fn folder_size_mismatch_names_both_files() {
    let dir = three_pairs("mismatch");
    write_gray(dir.sub("masks").join("b_mask.png"), &[0; 6], 3, 2).unwrap();
    let data =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    let err = data.get(1).unwrap_err();
    assert_names(&err, &dir.sub("images").join("b.png"));
    assert_names(&err, &dir.sub("masks").join("b_mask.png"));
}

#[test]
fn folder_channel_mismatch_is_an_error_naming_the_image() {
    let dir = three_pairs("channels");
    let grey = dir.sub("images").join("c.png");
    write_gray(&grey, &[0; 12], 4, 3).unwrap();
    let data =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_names(&data.get(2).unwrap_err(), &grey);
}

#[test]
fn folder_unreadable_file_is_an_error_naming_it() {
    let dir = three_pairs("unreadable");
    let broken = dir.sub("images").join("b.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let data =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_names(&data.get(1).unwrap_err(), &broken);

    let broken_mask = dir.sub("masks").join("c.png");
    std::fs::write(&broken_mask, b"garbage").unwrap();
    assert_names(&data.get(2).unwrap_err(), &broken_mask);
}

#[test]
fn folder_rgb_mask_is_an_error_naming_it() {
    let dir = three_pairs("rgbmask");
    let rgb = dir.sub("masks").join("a.png");
    write_rgb(&rgb, &[0; 36], 4, 3).unwrap();
    let data =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_names(&data.get(0).unwrap_err(), &rgb);
}

#[test]
fn folder_missing_or_empty_directory_is_an_error_naming_it() {
    let dir = TempDir::new("empty");
    let empty = dir.sub("empty");
    let missing = dir.0.join("missing");
    let err = ImageFolder::open(&missing, &empty, MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &missing);
    let images = three_pairs("empty-masks").sub("images");
    let err = ImageFolder::open(&images, &empty, MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &empty);
    let err = ImageFolder::open(
        &images,
        &images,
        MaskEncoding::ClassIndex { num_classes: 1 },
    )
    .unwrap_err();
    assert_eq!(config_field(err), "num_classes");
}

/// A fixture of `tests/fixtures/images/`, made by `scripts/make_image_fixtures.py`.
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(name)
}

/// The kind of the I/O error `err` wraps (it must be an `Error::Io`).
fn io_kind(err: &Error) -> std::io::ErrorKind {
    match err {
        Error::Io { source, .. } => source.kind(),
        other => panic!("expected an i/o error, got {other}"),
    }
}

#[test]
fn file_format_is_told_by_content_and_extension() {
    assert_eq!(FileFormat::from_path("a/b.JPEG"), Some(FileFormat::Jpeg));
    assert_eq!(FileFormat::from_path("b.tiff"), Some(FileFormat::Tiff));
    assert_eq!(FileFormat::from_path("b.png.txt"), None);
    assert_eq!(FileFormat::from_path("png"), None);
    assert_eq!(FileFormat::sniff(b"MM\0*rest"), Some(FileFormat::Tiff));
    assert_eq!(
        FileFormat::sniff(b"\xFF\xD8\xFF\xE0"),
        Some(FileFormat::Jpeg)
    );
    assert_eq!(FileFormat::sniff(b"BM"), None);
}

#[test]
fn tiff_gray16_round_trip() {
    let dir = TempDir::new("tiff16");
    let path = dir.0.join("t.tif");
    let values = [0u16, 1, 300, 40_000, 65535, 7];
    write_gray16_tiff(&path, &values, 3, 2).unwrap();
    let image = Image::read(&path).unwrap();
    assert_eq!(
        (image.channels, image.height, image.width, image.sample),
        (1, 2, 3, SampleType::U16)
    );
    let raw: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    assert_eq!(image.values, raw);
    let (scaled, _, _, _) = read_image(&path).unwrap();
    assert_eq!(scaled, raw.iter().map(|v| v / 65535.0).collect::<Vec<_>>());
    let (mask, h, w) = read_mask(&path).unwrap();
    assert_eq!((h, w), (2, 3));
    assert_eq!(mask, values.iter().map(|&v| v as u32).collect::<Vec<_>>());
}

#[test]
fn tiff_f32_round_trip_is_exact() {
    let dir = TempDir::new("tiff32");
    let path = dir.0.join("prob.tiff");
    let values = [0.0, 0.1, 1.0 / 3.0, 1.0, -2.5, 1e-30, 7e20, f32::NAN];
    write_f32_tiff(&path, &values, 4, 2).unwrap();
    let image = Image::read(&path).unwrap();
    assert_eq!((image.channels, image.height, image.width), (1, 2, 4));
    assert_eq!(image.sample, SampleType::F32);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&image.values), bits(&values));
    // Scale leaves floats as stored.
    assert_eq!(bits(&read_image(&path).unwrap().0), bits(&values));
    let err = read_mask(&path).unwrap_err();
    assert_names(&err, &path);
    assert!(err.to_string().contains("single-channel"), "{err}");
}

#[test]
fn reads_tiffs_written_by_tifffile() {
    // Values printed by scripts/make_image_fixtures.py.
    for name in ["gray16.tif", "gray16_deflate_be.tif"] {
        let image = Image::read(fixture(name)).unwrap();
        assert_eq!((image.channels, image.height, image.width), (1, 12, 10));
        assert_eq!(image.sample, SampleType::U16);
        assert_eq!(&image.values[..4], [382.0, 418.0, 431.0, 430.0], "{name}");
        assert_eq!(image.values[8 * 10 + 7], 60000.0);
        let (mask, _, _) = read_mask(fixture(name)).unwrap();
        assert_eq!(&mask[..4], [382, 418, 431, 430]);
    }
    let rgb16 = Image::read(fixture("rgb16.tif")).unwrap();
    assert_eq!((rgb16.channels, rgb16.height, rgb16.width), (3, 6, 5));
    let px = |y: usize, x: usize| [0, 1, 2].map(|c| rgb16.values[c * 30 + y * 5 + x]);
    assert_eq!(px(0, 0), [33200.0, 44043.0, 24396.0]);
    assert_eq!(px(5, 4), [38581.0, 49256.0, 29652.0]);
    let err = read_mask(fixture("rgb16.tif")).unwrap_err();
    assert!(err.to_string().contains("single-channel"), "{err}");

    let gray8 = Image::read(fixture("gray8.tif")).unwrap();
    assert_eq!(gray8.sample, SampleType::U8);
    assert_eq!(&gray8.values[..3], [125.0, 115.0, 136.0]);

    let prob = Image::read(fixture("prob_f32.tif")).unwrap();
    assert_eq!(
        (prob.sample, prob.height, prob.width),
        (SampleType::F32, 3, 4)
    );
    for (i, &v) in prob.values[..11].iter().enumerate() {
        assert!((v - i as f32 / 11.0).abs() < 1e-7, "{i}: {v}");
    }
    assert_eq!(prob.values[11], 0.123_456_79); // 0.123456789 as float32

    let labels = fixture("labels_u32.tif");
    let (mask, h, w) = read_mask(&labels).unwrap();
    assert_eq!((h, w), (4, 5));
    assert_eq!(
        (
            mask[0],
            mask[6],
            mask[13],
            mask.iter().filter(|&&v| v == 0).count()
        ),
        (1, 70000, 70000, 13)
    );
    let err = Image::read(&labels).unwrap_err();
    assert_names(&err, &labels);
    assert_eq!(io_kind(&err), std::io::ErrorKind::Unsupported);
}

#[test]
fn jpeg_decodes_close_to_pillow() {
    for (name, channels) in [("rgb444.jpg", 3), ("rgb420.jpg", 3), ("gray.jpg", 1)] {
        let ours = Image::read(fixture(name)).unwrap();
        let pillow = Image::read(fixture(&format!("{name}.pil.png"))).unwrap();
        assert_eq!(ours.sample, SampleType::U8);
        assert_eq!(
            (ours.channels, ours.height, ours.width),
            (channels, 16, 24),
            "{name}"
        );
        assert_eq!(
            (pillow.channels, pillow.height, pillow.width),
            (channels, 16, 24)
        );
        let diffs: Vec<f32> = ours
            .values
            .iter()
            .zip(&pillow.values)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().fold(0f32, |m, &d| m.max(d));
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(
            max <= MAX_JPEG_DIFF && mean <= MEAN_JPEG_DIFF,
            "{name}: max {max}, mean {mean}"
        );
    }
    let err = read_mask(fixture("gray.jpg")).unwrap_err();
    assert!(err.to_string().contains("JPEG"), "{err}");
}

#[test]
fn percentile_normalisation_matches_numpy() {
    // numpy.percentile of gray16.tif, printed by scripts/make_image_fixtures.py:
    //     values = tifffile.imread("gray16.tif").astype(np.float64).ravel()
    //     np.percentile(values, q)
    //     np.clip((values - lo) / (hi - lo), 0, 1).astype(np.float32)  # lo, hi: q = 1, 99.8
    let numpy = [
        (0.0, 324.0),
        (1.0, 337.38),
        (25.0, 387.75),
        (50.0, 407.5),
        (99.8, 46420.910000000025),
        (100.0, 60000.0),
    ];
    let image = Image::read(fixture("gray16.tif")).unwrap();
    for (q, expected) in numpy {
        let ours = percentile(&image.values, q).unwrap();
        assert!(
            (ours - expected).abs() <= 1e-9 * expected,
            "q {q}: {ours} vs {expected}"
        );
    }
    let normalized = image.into_normalized(Normalize::MICROSCOPY).unwrap();
    for (i, expected) in [(0, 0.000_968_241_8_f32), (33, 0.056_584_64), (87, 1.0)] {
        assert!(
            (normalized[i] - expected).abs() <= 1e-7,
            "{i}: {}",
            normalized[i]
        );
    }
    assert!(normalized.iter().all(|v| (0.0..=1.0).contains(v)));
    assert_eq!(normalized.iter().filter(|&&v| v == 0.0).count(), 2);

    let (min_max, ..) = read_image_with(fixture("gray16.tif"), Normalize::MinMax).unwrap();
    let lowest = min_max.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let highest = min_max.iter().fold(0f32, |m, &v| m.max(v));
    assert_eq!((lowest, highest), (0.0, 1.0));
    let bad = Normalize::Percentiles {
        low: 99.0,
        high: 1.0,
    };
    let err = read_image_with(fixture("gray16.tif"), bad).unwrap_err();
    assert_eq!(config_field(err), "percentiles");
}

#[test]
fn truncated_files_are_errors_naming_them() {
    let dir = TempDir::new("truncated");
    for name in [
        "gray16_deflate_be.tif",
        "gray16.tif",
        "rgb444.jpg",
        "gray.jpg",
    ] {
        let bytes = std::fs::read(fixture(name)).unwrap();
        // In the header, in the pixel data, and only the end marker or checksum lost.
        for cut in [bytes.len() / 3, bytes.len() - 60, bytes.len() - 2] {
            let path = dir.0.join(format!("cut{cut}_{name}"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = read_image(&path).unwrap_err();
            assert_names(&err, &path);
            if cut == bytes.len() - 2 {
                assert_eq!(io_kind(&err), std::io::ErrorKind::UnexpectedEof, "{err}");
            }
            if name.ends_with(".tif") {
                assert_names(&read_mask(&path).unwrap_err(), &path);
            }
        }
    }
    let path = dir.0.join("empty.tif");
    std::fs::write(&path, b"").unwrap();
    assert_names(&read_image(&path).unwrap_err(), &path);
}

/// A little-endian TIFF header of one uncompressed 8-bit grey strip of `width × height`
/// claimed pixels, and no pixel data.
fn tiff_claiming(width: u32, height: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, width),  // ImageWidth, LONG
        (257, 4, height), // ImageLength
        (258, 3, 8),      // BitsPerSample, SHORT
        (259, 3, 1),      // Compression: none
        (262, 3, 1),      // Photometric: black is zero
        (273, 4, 8),      // StripOffsets
        (278, 4, height), // RowsPerStrip
        (279, 4, 0),      // StripByteCounts
    ];
    let mut out = b"II*\0".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        out.extend(value.to_le_bytes());
    }
    out.extend(0u32.to_le_bytes());
    out
}

/// A PNG signature and header chunk claiming `width × height` 8-bit grey pixels, no data.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(width.to_be_bytes());
    chunk.extend(height.to_be_bytes());
    chunk.extend([8, 0, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&chunk);
    out.extend(crc32(&chunk).to_be_bytes());
    out
}

#[test]
fn empty_and_huge_claimed_images_are_errors_not_allocations() {
    let dir = TempDir::new("claims");
    let side = (MAX_SAMPLES as f64).sqrt() as u32 * 2;
    for (name, bytes) in [
        ("huge.tif", tiff_claiming(side, side)),
        ("zero.tif", tiff_claiming(0, 5)),
        ("huge.png", png_claiming(side, side)),
        ("zero.png", png_claiming(5, 0)),
    ] {
        let path = dir.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        assert_names(&read_image(&path).unwrap_err(), &path);
        assert_names(&read_mask(&path).unwrap_err(), &path);
    }
    let huge = dir.0.join("huge.tif");
    assert_eq!(
        io_kind(&read_image(&huge).unwrap_err()),
        std::io::ErrorKind::OutOfMemory
    );
    let err = write_gray(dir.0.join("nothing.png"), &[], 0, 3).unwrap_err();
    assert!(
        matches!(err, Error::Shape(_)) && err.to_string().contains("nothing.png"),
        "{err}"
    );
    let err = write_f32_tiff(dir.0.join("short.tif"), &[0.0; 5], 2, 3).unwrap_err();
    assert!(err.to_string().contains("short.tif"), "{err}");
}

#[test]
fn unsupported_formats_are_errors_naming_the_file() {
    let dir = TempDir::new("formats");
    let gif = dir.0.join("really_a_gif.png");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();
    let err = read_image(&gif).unwrap_err();
    assert_names(&err, &gif);
    assert_eq!(io_kind(&err), std::io::ErrorKind::Unsupported);
    assert!(err.to_string().contains("not a PNG, TIFF or JPEG"), "{err}");
    assert_names(&read_mask(&gif).unwrap_err(), &gif);
}

#[test]
fn writes_replace_files_whole_and_leave_no_temporary_file() {
    let dir = TempDir::new("atomic");
    let path = dir.0.join("out.png");
    write_gray(&path, &[1, 2, 3, 4], 2, 2).unwrap();
    write_gray(&path, &[9; 6], 3, 2).unwrap();
    assert_eq!(read_mask(&path).unwrap(), (vec![9; 6], 2, 3));
    // A failed write leaves the old file as it was.
    assert!(write_rgb(&path, &[0; 5], 2, 2).is_err());
    assert!(write_indexed(&path, &[0, 1], &[], 2, 1).is_err());
    assert_eq!(read_mask(&path).unwrap(), (vec![9; 6], 2, 3));
    write_gray16_tiff(dir.0.join("out.tif"), &[5; 4], 2, 2).unwrap();
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let missing = dir.0.join("no/such/dir/x.png");
    assert_names(&write_gray(&missing, &[0], 1, 1).unwrap_err(), &missing);
}

#[test]
#[allow(deprecated)]
fn former_png_names_still_work() {
    let dir = three_pairs("former");
    let data = unetpp::data::folder::PngFolder::open(
        dir.sub("images"),
        dir.sub("masks"),
        MaskEncoding::Binary,
    )
    .unwrap();
    assert_eq!(data.len(), 3);
    let (_, c, _, _) = unetpp::data::png_io::read_image(&data.pairs()[0].0).unwrap();
    assert_eq!(c, 3);
}

#[test]
fn folder_pairs_mixed_extensions_by_stem() {
    let dir = TempDir::new("mixed");
    let (images, masks) = (dir.sub("images"), dir.sub("masks"));
    std::fs::copy(fixture("rgb444.jpg"), images.join("a.JPG")).unwrap();
    write_rgb(images.join("b.Png"), &[200; 3 * 24 * 16], 24, 16).unwrap();
    std::fs::copy(fixture("rgb420.jpg"), images.join("c.jpeg")).unwrap();
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let mask: Vec<u16> = (0..24 * 16).map(|p| (p % 3 == 0) as u16).collect();
    write_gray16_tiff(masks.join("a_mask.tif"), &mask, 24, 16).unwrap();
    write_gray16_tiff(masks.join("b.TIFF"), &mask, 24, 16).unwrap();
    let mask8: Vec<u8> = mask.iter().map(|&v| v as u8 * 255).collect();
    write_gray(masks.join("c.png"), &mask8, 24, 16).unwrap();

    let data = ImageFolder::open(&images, &masks, MaskEncoding::Binary).unwrap();
    assert_eq!((data.len(), data.channels()), (3, 3));
    let names: Vec<_> = data
        .pairs()
        .iter()
        .map(|(i, m)| (i.file_name().unwrap(), m.file_name().unwrap()))
        .collect();
    assert_eq!(names[0], ("a.JPG".as_ref(), "a_mask.tif".as_ref()));
    assert_eq!(names[1], ("b.Png".as_ref(), "b.TIFF".as_ref()));
    assert_eq!(names[2], ("c.jpeg".as_ref(), "c.png".as_ref()));
    for i in 0..3 {
        let s = data.get(i).unwrap();
        assert_eq!((s.channels, s.height, s.width), (3, 16, 24));
        assert_eq!(s.mask, mask.iter().map(|&v| v as u32).collect::<Vec<_>>());
    }
    assert!(data
        .get(1)
        .unwrap()
        .image
        .iter()
        .all(|&v| v == 200.0 / 255.0));

    // Percentiles spread the constant image `b` to 0; the others to [0, 1].
    let data = data.normalize(Normalize::MICROSCOPY).unwrap();
    assert_eq!(data.normalization(), Normalize::MICROSCOPY);
    assert!(data.get(1).unwrap().image.iter().all(|&v| v == 0.0));
    let a = data.get(0).unwrap().image;
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(a.contains(&0.0) && a.contains(&1.0));
    let bad = Normalize::Percentiles {
        low: 2.0,
        high: 101.0,
    };
    assert_eq!(
        config_field(data.normalize(bad).unwrap_err()),
        "percentiles"
    );
}

#[test]
fn folder_two_files_of_one_stem_are_ambiguous() {
    let dir = three_pairs("ambiguous");
    let twin = dir.sub("images").join("b.tif");
    write_gray16_tiff(&twin, &[0; 12], 4, 3).unwrap();
    let err =
        ImageFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &twin);
    assert_names(&err, &dir.sub("images").join("b.png"));
}

#[test]
fn folder_jpeg_or_colour_tiff_mask_is_an_error_naming_it() {
    let dir = three_pairs("jpegmask");
    let masks = dir.sub("masks");
    std::fs::remove_file(masks.join("a.png")).unwrap();
    std::fs::copy(fixture("gray.jpg"), masks.join("a.jpg")).unwrap();
    std::fs::remove_file(masks.join("c.png")).unwrap();
    std::fs::copy(fixture("rgb16.tif"), masks.join("c.tif")).unwrap();
    let data = ImageFolder::open(dir.sub("images"), &masks, MaskEncoding::Binary).unwrap();
    assert_names(&data.get(0).unwrap_err(), &masks.join("a.jpg"));
    assert_names(&data.get(2).unwrap_err(), &masks.join("c.tif"));
}

/// Sample `i` is an `h × w` ramp offset by `i`, whose image equals its mask as `f32`, so that
/// any misalignment of image and mask shows.
#[derive(Debug)]
struct Ramps {
    n: usize,
    h: usize,
    w: usize,
}

impl Dataset for Ramps {
    fn len(&self) -> usize {
        self.n
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let mask: Vec<u32> = (0..self.h * self.w)
            .map(|p| (p + 1000 * index) as u32)
            .collect();
        let image = mask.iter().map(|&v| v as f32).collect();
        Sample::new(image, mask, 1, self.h, self.w)
    }

    fn channels(&self) -> usize {
        1
    }

    fn num_classes(&self) -> usize {
        2
    }
}

fn first_pixels(loader: &DataLoader<Ramps>, epoch: usize) -> Vec<u32> {
    loader
        .batches(epoch, &Device::Cpu)
        .flat_map(|b| {
            let labels = b.unwrap().labels;
            let n = labels.dim(0).unwrap();
            (0..n)
                .map(|i| {
                    labels
                        .get(i)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<u32>()
                        .unwrap()[0]
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn loader_batches_have_expected_shapes_and_dtypes() {
    let data = synthetic(small_config().channels(3).num_classes(4));
    let loader = DataLoader::new(data, 5).unwrap();
    assert_eq!(loader.num_batches(), 4);
    let batches: Vec<_> = loader.batches(0, &Device::Cpu).collect();
    assert_eq!(batches.len(), 4);
    let b = batches[0].as_ref().unwrap();
    assert_eq!(
        (b.images.dims(), b.images.dtype()),
        (&[5, 3, 32, 32][..], DType::F32)
    );
    assert_eq!(
        (b.masks.dims(), b.masks.dtype()),
        (&[5, 1, 32, 32][..], DType::F32)
    );
    assert_eq!(
        (b.labels.dims(), b.labels.dtype()),
        (&[5, 32, 32][..], DType::U32)
    );
    assert_eq!(batches[3].as_ref().unwrap().images.dim(0).unwrap(), 1);
}

#[test]
fn loader_rejects_batch_size_zero() {
    let data = Ramps { n: 4, h: 2, w: 2 };
    assert_eq!(
        config_field(DataLoader::new(data, 0).unwrap_err()),
        "batch_size"
    );
}

#[test]
fn loader_without_shuffle_keeps_data_set_order() {
    let loader = DataLoader::new(Ramps { n: 5, h: 2, w: 2 }, 2).unwrap();
    assert_eq!(first_pixels(&loader, 0), vec![0, 1000, 2000, 3000, 4000]);
    assert_eq!(first_pixels(&loader, 3), vec![0, 1000, 2000, 3000, 4000]);
}

#[test]
fn loader_shuffle_is_reproducible_and_differs_across_epochs() {
    let make = |seed| {
        DataLoader::new(Ramps { n: 20, h: 2, w: 2 }, 3)
            .unwrap()
            .shuffle(seed)
    };
    let (a, b, c) = (make(5), make(5), make(6));
    assert_eq!(first_pixels(&a, 0), first_pixels(&b, 0));
    assert_eq!(first_pixels(&a, 1), first_pixels(&b, 1));
    assert_ne!(a.order(0), a.order(1));
    assert_ne!(a.order(0), c.order(0));
    let mut all = a.order(0);
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>());
}

#[test]
fn loader_drop_last_drops_the_partial_batch() {
    let keep = DataLoader::new(Ramps { n: 10, h: 2, w: 2 }, 4).unwrap();
    let sizes: Vec<usize> = keep
        .batches(0, &Device::Cpu)
        .map(|b| b.unwrap().images.dim(0).unwrap())
        .collect();
    assert_eq!((keep.num_batches(), sizes), (3, vec![4, 4, 2]));

    let drop = keep.drop_last(true);
    let sizes: Vec<usize> = drop
        .batches(0, &Device::Cpu)
        .map(|b| b.unwrap().images.dim(0).unwrap())
        .collect();
    assert_eq!((drop.num_batches(), sizes), (2, vec![4, 4]));
    assert_eq!(drop.batches(0, &Device::Cpu).len(), 2);
}

#[test]
fn augmentation_keeps_image_and_mask_aligned() {
    for (h, w) in [(4, 4), (3, 5)] {
        let loader = DataLoader::new(Ramps { n: 8, h, w }, 4)
            .unwrap()
            .shuffle(1)
            .augment(Augment::flips_and_rotations());
        let mut changed = false;
        for epoch in 0..4 {
            for batch in loader.batches(epoch, &Device::Cpu) {
                let batch = batch.unwrap();
                assert_eq!(batch.images.dims(), &[4, 1, h, w]);
                let labels = batch
                    .labels
                    .to_dtype(DType::F32)
                    .unwrap()
                    .unsqueeze(1)
                    .unwrap();
                let diff = (&batch.images - &labels).unwrap().abs().unwrap();
                assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
                let plain = batch
                    .images
                    .flatten_from(1)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                changed |= plain.iter().any(|row| row.windows(2).any(|p| p[1] < p[0]));
            }
        }
        assert!(changed, "{h}x{w}: no sample was ever transformed");
    }
}

#[test]
fn augmentation_is_reproducible() {
    let make = || {
        DataLoader::new(Ramps { n: 6, h: 4, w: 4 }, 3)
            .unwrap()
            .shuffle(9)
            .augment(Augment::flips_and_rotations())
    };
    let (a, b) = (make(), make());
    for (x, y) in a.batches(2, &Device::Cpu).zip(b.batches(2, &Device::Cpu)) {
        let (x, y) = (x.unwrap().images, y.unwrap().images);
        let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
    assert_eq!(a.sample(1, 3).unwrap(), b.sample(1, 3).unwrap());
}

#[test]
fn flips_twice_and_four_quarter_turns_are_identity() {
    let s = Ramps { n: 1, h: 3, w: 5 }.get(0).unwrap();
    assert_eq!(hflip(&hflip(&s).unwrap()).unwrap(), s);
    assert_eq!(vflip(&vflip(&s).unwrap()).unwrap(), s);
    let mut r = s.clone();
    for _ in 0..4 {
        r = rot90(&r, 1).unwrap();
    }
    assert_eq!(r, s);
    assert_ne!(hflip(&s).unwrap(), s);
}

#[test]
fn rot90_turns_counter_clockwise_and_swaps_sizes() {
    // 0 1 2        2 5
    // 3 4 5   ->   1 4
    //              0 3
    let s = Ramps { n: 1, h: 2, w: 3 }.get(0).unwrap();
    let r = rot90(&s, 1).unwrap();
    assert_eq!((r.height, r.width), (3, 2));
    assert_eq!(r.mask, vec![2, 5, 1, 4, 0, 3]);
    assert_eq!(rot90(&s, 3).unwrap(), rot90(&r, 2).unwrap());
    assert_eq!(rot90(&s, 2).unwrap(), hflip(&vflip(&s).unwrap()).unwrap());
}

#[test]
fn transforms_reject_inconsistent_samples() {
    let broken = Sample {
        image: vec![0.0; 3],
        mask: vec![0; 4],
        channels: 1,
        height: 2,
        width: 2,
    };
    assert!(hflip(&broken).is_err());
    assert!(rot90(&broken, 1).is_err());
}

#[cfg(feature = "detection")]
mod nuclei {
    use unetpp::data::instances::{NucleiConfig, SyntheticNuclei};

    #[test]
    fn samples_are_seeded_disjoint_and_boxed_by_their_masks() {
        let cfg = || NucleiConfig::builder().samples(6).seed(3).build().unwrap();
        let set = SyntheticNuclei::new(cfg()).unwrap();
        let again = SyntheticNuclei::new(cfg()).unwrap();
        let mut sizes = Vec::new();
        for i in 0..6 {
            let s = set.get(i).unwrap();
            assert_eq!(s, again.get(i).unwrap());
            let (h, w) = (s.height, s.width);
            let mut cover = vec![0u8; h * w];
            for inst in &s.instances {
                assert_eq!(inst.label, 1);
                let mut ext = [w, h, 0, 0];
                for (p, _) in inst.mask.iter().enumerate().filter(|(_, &m)| m == 1) {
                    cover[p] += 1;
                    let (y, x) = (p / w, p % w);
                    ext = [
                        ext[0].min(x),
                        ext[1].min(y),
                        ext[2].max(x + 1),
                        ext[3].max(y + 1),
                    ];
                }
                assert_eq!(inst.bbox, ext.map(|v| v as f32));
                sizes.push(inst.mask.iter().filter(|&&m| m == 1).count());
            }
            assert!(cover.iter().all(|&c| c <= 1), "masks overlap in sample {i}");
            assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
        }
        // Objects of widely varying size.
        let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(*max > 8 * *min, "sizes {min}..{max}");
        assert_ne!(set.get(0).unwrap(), set.get(1).unwrap());
    }

    #[test]
    fn two_classes_by_shape_and_config_errors() {
        let cfg = NucleiConfig::builder()
            .samples(8)
            .seed(5)
            .classes(2)
            .build()
            .unwrap();
        let set = SyntheticNuclei::new(cfg.clone()).unwrap();
        let labels: Vec<u32> = (0..8)
            .flat_map(|i| set.get(i).unwrap().instances.into_iter().map(|x| x.label))
            .collect();
        assert!(labels.contains(&1) && labels.contains(&2));
        let s = set.get(0).unwrap();
        let dev = candle_core::Device::Cpu;
        let k = s.instances.len();
        assert_eq!(s.boxes_tensor(&dev).unwrap().dims(), &[k, 4]);
        assert_eq!(s.masks_tensor(&dev).unwrap().dims(), &[k, 96, 96]);
        assert_eq!(s.image_tensor(&dev).unwrap().dims(), &[3, 96, 96]);
        assert!(set.get(8).is_err());
        let b = || cfg.to_builder();
        for (bad, field) in [
            (b().classes(3), "classes"),
            (b().size(8, 96), "size"),
            (b().radius(5.0, 2.0), "radius"),
            (b().objects(4, 2), "objects"),
            (b().noise(-0.1), "noise"),
        ] {
            assert_eq!(super::config_field(bad.build().unwrap_err()), field);
        }
        assert_eq!(cfg.to_builder().build().unwrap(), cfg);
    }
}
