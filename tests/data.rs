//! Data sets, PNG I/O and the data loader.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device};
use unetpp::data::folder::{MaskEncoding, PngFolder};
use unetpp::data::loader::{hflip, rot90, vflip, Augment, DataLoader};
use unetpp::data::png_io::{
    read_image, read_mask, write_gray, write_gray16, write_indexed, write_rgb,
};
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
    let data = PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
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
    let data = PngFolder::open(
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
    let data = PngFolder::open(
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
        PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &lonely);
}

#[test]
fn folder_mask_without_image_is_an_error_naming_it() {
    let dir = three_pairs("noimage");
    let orphan = dir.sub("masks").join("orphan_mask.png");
    write_gray(&orphan, &[0; 4], 2, 2).unwrap();
    let err =
        PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &orphan);
}

#[test]
fn folder_size_mismatch_names_both_files() {
    let dir = three_pairs("mismatch");
    write_gray(dir.sub("masks").join("b_mask.png"), &[0; 6], 3, 2).unwrap();
    let data = PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    let err = data.get(1).unwrap_err();
    assert_names(&err, &dir.sub("images").join("b.png"));
    assert_names(&err, &dir.sub("masks").join("b_mask.png"));
}

#[test]
fn folder_channel_mismatch_is_an_error_naming_the_image() {
    let dir = three_pairs("channels");
    let grey = dir.sub("images").join("c.png");
    write_gray(&grey, &[0; 12], 4, 3).unwrap();
    let data = PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_names(&data.get(2).unwrap_err(), &grey);
}

#[test]
fn folder_unreadable_file_is_an_error_naming_it() {
    let dir = three_pairs("unreadable");
    let broken = dir.sub("images").join("b.png");
    std::fs::write(&broken, b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let data = PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
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
    let data = PngFolder::open(dir.sub("images"), dir.sub("masks"), MaskEncoding::Binary).unwrap();
    assert_names(&data.get(0).unwrap_err(), &rgb);
}

#[test]
fn folder_missing_or_empty_directory_is_an_error_naming_it() {
    let dir = TempDir::new("empty");
    let empty = dir.sub("empty");
    let missing = dir.0.join("missing");
    let err = PngFolder::open(&missing, &empty, MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &missing);
    let images = three_pairs("empty-masks").sub("images");
    let err = PngFolder::open(&images, &empty, MaskEncoding::Binary).unwrap_err();
    assert_names(&err, &empty);
    let err = PngFolder::open(
        &images,
        &images,
        MaskEncoding::ClassIndex { num_classes: 1 },
    )
    .unwrap_err();
    assert_eq!(config_field(err), "num_classes");
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
