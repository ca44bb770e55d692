//! Metrics on hand-made masks, including empty ones.

use candle_core::{Device, Tensor};
use unetpp::metrics::{
    dice_binary, iou_binary, labels_from_logits, ClassCounts, SegmentationMetrics,
};

fn labels(rows: &[&[u32]], n: usize) -> Tensor {
    let h = rows.len() / n;
    let w = rows[0].len();
    let v: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(v, (n, h, w), &Device::Cpu).unwrap()
}

#[test]
fn binary_iou_and_dice_by_hand() {
    // Target: 4 foreground pixels; prediction: 3 of them plus 1 false positive.
    let target = labels(&[&[1, 1, 0], &[1, 1, 0], &[0, 0, 0]], 1);
    let pred = labels(&[&[1, 1, 0], &[1, 0, 1], &[0, 0, 0]], 1);
    let mut m = SegmentationMetrics::binary();
    m.update(&pred, &target).unwrap();
    assert_eq!(
        m.counts(1),
        ClassCounts {
            intersection: 3,
            predicted: 4,
            target: 4
        }
    );
    assert_eq!(m.iou(1), 3.0 / 5.0);
    assert_eq!(m.dice(1), 6.0 / 8.0);
    // Background: 5 pixels each way, 4 of them shared.
    assert_eq!(
        m.counts(0),
        ClassCounts {
            intersection: 4,
            predicted: 5,
            target: 5
        }
    );
    assert_eq!(m.mean_iou(), 0.6);
}

#[test]
fn empty_masks_agree_perfectly_and_one_sided_empties_score_zero() {
    let empty = labels(&[&[0, 0], &[0, 0]], 1);
    let full = labels(&[&[1, 1], &[1, 1]], 1);
    let mut m = SegmentationMetrics::binary();
    m.update(&empty, &empty).unwrap();
    assert_eq!(m.iou(1), 1.0);
    assert_eq!(m.dice(1), 1.0);
    m.update(&full, &empty).unwrap();
    assert_eq!(m.image_ious(), vec![1.0, 0.0]);
    assert_eq!(m.image_dices(), vec![1.0, 0.0]);
    assert_eq!(m.mean_image_iou(), 0.5);
    // Over the data set: nothing in the target, 4 predicted pixels.
    assert_eq!(m.iou(1), 0.0);
    assert_eq!(m.images(), 2);
}

#[test]
fn per_image_and_data_set_scores_differ_as_documented() {
    // Image 0: a big object found exactly (16 px). Image 1: a 1-pixel object missed.
    let mut t = vec![0u32; 2 * 16];
    let mut p = vec![0u32; 2 * 16];
    for i in 0..16 {
        t[i] = 1;
        p[i] = 1;
    }
    t[16] = 1;
    let t = Tensor::from_vec(t, (2, 4, 4), &Device::Cpu).unwrap();
    let p = Tensor::from_vec(p, (2, 4, 4), &Device::Cpu).unwrap();
    let mut m = SegmentationMetrics::binary();
    m.update(&p, &t).unwrap();
    assert_eq!(m.iou(1), 16.0 / 17.0);
    assert_eq!(m.mean_image_iou(), 0.5);
}

#[test]
fn multiclass_per_class_scores() {
    let target = labels(&[&[0, 1, 2], &[0, 1, 2]], 1);
    let pred = labels(&[&[0, 1, 1], &[0, 2, 2]], 1);
    let mut m = SegmentationMetrics::new(4).unwrap();
    m.update(&pred, &target).unwrap();
    let iou = m.per_class_iou();
    assert_eq!(iou, vec![1.0, 1.0 / 3.0, 1.0 / 3.0, 1.0]); // class 3 absent in both
    assert_eq!(m.per_class_dice()[1], 0.5);
    assert!((m.mean_iou() - (1.0 / 3.0 + 1.0 / 3.0 + 1.0) / 3.0).abs() < 1e-12);
}

#[test]
fn ignored_pixels_do_not_count() {
    let target = labels(&[&[1, 255], &[0, 255]], 1);
    let pred = labels(&[&[1, 1], &[0, 1]], 1);
    let mut m = SegmentationMetrics::binary().ignore_index(255);
    m.update(&pred, &target).unwrap();
    assert_eq!(m.iou(1), 1.0);
}

#[test]
fn labels_from_binary_and_multiclass_logits() {
    let dev = Device::Cpu;
    let bin = Tensor::new(&[[[[2f32, -1.], [0.5, -0.1]]]], &dev).unwrap();
    let l = labels_from_logits(&bin).unwrap();
    assert_eq!(
        l.to_vec3::<u32>().unwrap(),
        vec![vec![vec![1, 0], vec![1, 0]]]
    );
    let mc = Tensor::new(&[[[[0f32, 5.]], [[3., 1.]], [[1., 2.]]]], &dev).unwrap(); // (1,3,1,2)
    let l = labels_from_logits(&mc).unwrap();
    assert_eq!(l.to_vec3::<u32>().unwrap(), vec![vec![vec![1, 0]]]);
    let mut m = SegmentationMetrics::new(3).unwrap();
    m.update_logits(&mc, &Tensor::new(&[[[1u32, 0]]], &dev).unwrap())
        .unwrap();
    assert_eq!(m.iou(1), 1.0);
}

#[test]
fn binary_helpers_on_probabilities() {
    let dev = Device::Cpu;
    let p = Tensor::new(&[0.9f32, 0.8, 0.2, 0.6], &dev).unwrap();
    let t = Tensor::new(&[1f32, 1., 0., 0.], &dev).unwrap();
    assert!((iou_binary(&p, &t).unwrap() - 2.0 / 3.0).abs() < 1e-6);
    assert!((dice_binary(&p, &t).unwrap() - 0.8).abs() < 1e-6);
    let z = Tensor::zeros(4, candle_core::DType::F32, &dev).unwrap();
    assert_eq!(iou_binary(&z, &z).unwrap(), 1.0);
    assert_eq!(dice_binary(&z, &z).unwrap(), 1.0);
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let mut m = SegmentationMetrics::binary();
    let a = Tensor::zeros((1, 2, 2), candle_core::DType::U32, &dev).unwrap();
    let b = Tensor::zeros((1, 2, 3), candle_core::DType::U32, &dev).unwrap();
    assert!(m.update(&a, &b).is_err());
    let mut two = vec![0u32; 8];
    two[7] = 2; // the second image holds a label out of range
    let two = Tensor::from_vec(two, (2, 2, 2), &dev).unwrap();
    let zeros = Tensor::zeros((2, 2, 2), candle_core::DType::U32, &dev).unwrap();
    let e = m.update(&two, &zeros).unwrap_err();
    assert!(e.to_string().contains("label 2"), "{e}");
    let f = Tensor::zeros((1, 2, 2), candle_core::DType::F32, &dev).unwrap();
    assert!(m.update(&f, &a).is_err());
    assert!(SegmentationMetrics::new(1).is_err());
    assert_eq!(m.images(), 0, "a failed update adds nothing");
}
