//! Mask R-CNN against torchvision 0.29's `maskrcnn_resnet50_fpn` (fixture from
//! `scripts/make_maskrcnn_fixtures.py`; weights from the shared formulas on both sides): the
//! pyramid, the RPN's proposals and the final detections on two images, against torchvision's
//! float64 results within a multiple of its own float32 error (`common::assert_within_torch`;
//! the script checks that no NMS, threshold or cut is decided within that distance), the RPN
//! losses in training, the nested pyramid of Mask R-CNN++, and errors.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{assert_within_torch, detection_weight, get, max_rel_diff, torch_err, Metric};
use rand::SeedableRng;
use unetpp::encoders::ResNetConfig;
use unetpp::maskrcnn::{
    AnchorGenerator, MaskRcnn, MaskRcnnConfig, RcnnTransform, ResNetFpn, RoiHeadsConfig, Rpn,
    RpnConfig, RpnConfigBuilder,
};
use unetpp::weights::prefixed;
use unetpp::Error;

fn fixture() -> HashMap<String, Tensor> {
    common::fixture("maskrcnn.safetensors")
}

fn resnet() -> ResNetConfig {
    ResNetConfig::resnet50().frozen_bn(true).build().unwrap()
}

/// torchvision's RPN as the script sets it: 50 proposals per image at test time (not 1000),
/// as no input tried orders all ~150 survivors of NMS with margins wider than the tolerance.
fn rpn_config() -> RpnConfigBuilder {
    RpnConfig::mask_rcnn().post_nms_top_n(2000, 50)
}

fn build(vb: VarBuilder) -> (ResNetFpn, Rpn) {
    let backbone = ResNetFpn::new(&resnet(), 256, vb.pp("backbone")).unwrap();
    let rpn = Rpn::new(
        &rpn_config().build().unwrap(),
        AnchorGenerator::fpn(),
        256,
        vb.pp("rpn"),
    )
    .unwrap();
    (backbone, rpn)
}

/// The fixture's detector: 5 classes, images resized to 48 / 64, 50 proposals and 20
/// detections per image.
fn fixture_config() -> MaskRcnnConfig {
    MaskRcnnConfig::mask_rcnn(5)
        .rpn(rpn_config())
        .transform(RcnnTransform::mask_rcnn().min_size(48).max_size(64))
        .roi_heads(
            RoiHeadsConfig::mask_rcnn()
                .num_classes(5)
                .detections_per_img(20),
        )
        .build()
        .unwrap()
}

/// The script's weights: `fill`'s formula for every tensor, `scramble`'s for those of two or
/// more dimensions.
fn formula_weights(named: Vec<unetpp::nn::NamedTensor>) -> HashMap<String, Tensor> {
    named
        .into_iter()
        .map(|t| {
            let v = detection_weight(&t.name, t.tensor.dims());
            (t.name, v)
        })
        .collect()
}

fn formula_detector() -> MaskRcnn {
    let cfg = fixture_config();
    let varmap = VarMap::new();
    let m = MaskRcnn::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    MaskRcnn::from_torchvision(&cfg, formula_weights(m.named_tensors()), &Device::Cpu).unwrap()
}

/// The backbone and RPN with the script's weights.
fn formula_model() -> (ResNetFpn, Rpn) {
    let varmap = VarMap::new();
    let (b, r) = build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    let named = prefixed(b.named_tensors(), "backbone")
        .into_iter()
        .chain(prefixed(r.named_tensors(), "rpn"))
        .collect();
    build(VarBuilder::from_tensors(
        formula_weights(named),
        DType::F32,
        &Device::Cpu,
    ))
}

fn sizes(f: &HashMap<String, Tensor>) -> Vec<(usize, usize)> {
    get(f, "image_sizes")
        .to_vec2::<i64>()
        .unwrap()
        .iter()
        .map(|s| (s[0] as usize, s[1] as usize))
        .collect()
}

#[test]
fn pyramid_and_proposals_match_torchvision() {
    let f = fixture();
    let (backbone, rpn) = formula_model();
    let batch = get(&f, "batch");
    let maps = backbone.forward(batch).unwrap();
    assert_eq!(maps.len(), 5);
    for (i, m) in maps.iter().enumerate() {
        assert_within_torch(
            &m.narrow(1, 0, 4).unwrap(),
            get(&f, &format!("fpn{i}.head")),
            torch_err(&f, "fpn.head"),
            Metric::Rel,
            &format!("level {i}: first channels"),
        );
        assert_within_torch(
            &m.sum((2, 3)).unwrap(),
            get(&f, &format!("fpn{i}.sums")),
            torch_err(&f, "fpn.sums"),
            Metric::Rel,
            &format!("level {i}: channel sums"),
        );
    }
    let (_, _, h, w) = batch.dims4().unwrap();
    let out = rpn.forward((h, w), &sizes(&f), &maps, false).unwrap();
    for (i, boxes) in out.boxes.iter().enumerate() {
        let want = get(&f, &format!("proposals{i}"));
        assert_eq!(boxes.dims(), &[50, 4], "image {i}: number of proposals");
        assert_within_torch(
            boxes,
            want,
            torch_err(&f, "proposals"),
            Metric::Abs,
            &format!("image {i}: proposals (px)"),
        );
    }
}

#[test]
fn detections_match_torchvision() {
    let f = fixture();
    let model = formula_detector();
    let images = [get(&f, "image0").clone(), get(&f, "image1").clone()];
    let found = model.detect(&images).unwrap();
    for (i, d) in found.iter().enumerate() {
        let p = format!("det{i}.");
        let labels = d.labels.to_vec1::<i64>().unwrap();
        let want = get(&f, &format!("{p}labels")).to_vec1::<i64>().unwrap();
        assert_eq!(labels, want, "image {i}: labels");
        assert_eq!(
            labels.len(),
            20,
            "image {i}: the fixture's detections are truncated"
        );
        let check = |ours: &Tensor, key: &str, tol: &str, metric| {
            let what = format!("image {i}: {key}");
            let want = get(&f, &format!("{p}{key}"));
            assert_within_torch(ours, want, torch_err(&f, tol), metric, &what);
        };
        check(&d.boxes, "boxes", "boxes", Metric::Abs);
        check(&d.scores, "scores", "scores", Metric::Abs);
        let first = d.masks.narrow(0, 0, 8).unwrap();
        check(&first, "masks_first", "masks", Metric::Abs);
        let sums = d.masks.sum((1, 2, 3)).unwrap();
        check(&sums, "mask_sums", "mask_sums", Metric::Rel);
        assert_eq!(
            d.masks.dims()[2..],
            images[i].dims()[1..],
            "pasted into the image"
        );
        assert!(d.masks.device().is_cpu(), "pasted masks stay on the host");
        let binary = d.binary_masks(0.5).unwrap();
        assert_eq!(binary.dtype(), DType::U8);
        let want = d.masks.ge(0.5).unwrap().to_dtype(DType::U8).unwrap();
        assert_eq!(
            binary.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<u8>().unwrap()
        );
        assert!(d.binary_masks(1.5).is_err());
    }
}

#[test]
fn legacy_fpn_and_rpn_names_load() {
    let (backbone, rpn) = formula_model();
    let legacy: HashMap<String, Tensor> = prefixed(backbone.named_tensors(), "backbone")
        .into_iter()
        .chain(prefixed(rpn.named_tensors(), "rpn"))
        .map(|t| {
            // Names before torchvision 0.13: `inner_blocks.0.weight`, `rpn.head.conv.weight`.
            let name = if t.name.starts_with("backbone.fpn.") {
                t.name
                    .replace(".0.weight", ".weight")
                    .replace(".0.bias", ".bias")
            } else {
                t.name.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
            };
            (name, t.tensor)
        })
        .collect();
    assert!(legacy.contains_key("backbone.fpn.inner_blocks.0.weight"));
    assert!(legacy.contains_key("rpn.head.conv.weight"));
    let current = unetpp::maskrcnn::current_names(legacy);
    let (b2, r2) = build(VarBuilder::from_tensors(current, DType::F32, &Device::Cpu));
    let x = Tensor::randn(0f32, 1., (1, 3, 64, 64), &Device::Cpu).unwrap();
    let a = backbone.forward(&x).unwrap();
    let b = b2.forward(&x).unwrap();
    for (p, q) in a.iter().zip(&b) {
        assert_eq!(max_rel_diff(p, q), 0.0);
    }
    let pa = rpn.forward((64, 64), &[(64, 64)], &a, false).unwrap();
    let pb = r2.forward((64, 64), &[(64, 64)], &b, false).unwrap();
    assert_eq!(max_rel_diff(&pa.objectness, &pb.objectness), 0.0);
}

#[test]
fn rpn_losses_are_finite_and_reach_the_head() {
    let f = fixture();
    let varmap = VarMap::new();
    let (backbone, rpn) = build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    let batch = get(&f, "batch");
    let maps = backbone.forward_t(batch, true).unwrap();
    let out = rpn.forward((64, 64), &sizes(&f), &maps, true).unwrap();
    let gt = vec![
        Tensor::new(&[[4f32, 5., 30., 28.], [30., 10., 60., 40.]], &Device::Cpu).unwrap(),
        Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap(),
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let losses = rpn.losses(&out, &gt, &mut rng).unwrap();
    let obj = losses.objectness.to_scalar::<f32>().unwrap();
    let reg = losses.box_reg.to_scalar::<f32>().unwrap();
    assert!(obj.is_finite() && obj > 0.0, "{obj}");
    assert!(reg.is_finite() && reg >= 0.0, "{reg}");
    let total = (losses.objectness + losses.box_reg).unwrap();
    let grads = total.backward().unwrap();
    let vars = varmap.all_vars();
    let head: Vec<&Var> = vars
        .iter()
        .filter(|v| grads.get(v.as_tensor()).is_some())
        .collect();
    assert!(!head.is_empty(), "no gradient reached any weight");
    // Images without objects train: only negatives.
    let none = vec![Tensor::zeros((0, 4), DType::F32, &Device::Cpu).unwrap(); 2];
    let losses = rpn.losses(&out, &none, &mut rng).unwrap();
    assert_eq!(losses.box_reg.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn rpn_rejects_bad_input() {
    let varmap = VarMap::new();
    let (backbone, rpn) = build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu));
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let maps = backbone.forward(&x).unwrap();
    assert!(matches!(
        rpn.forward((64, 64), &[(64, 64)], &maps[..4], false),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        rpn.forward((64, 64), &[(64, 64), (64, 64)], &maps, false),
        Err(Error::Shape(_))
    ));
    let out = rpn.forward((64, 64), &[(64, 64)], &maps, true).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let flipped = [Tensor::new(&[[10f32, 0., 5., 5.]], &Device::Cpu).unwrap()];
    assert!(matches!(
        rpn.losses(&out, &flipped, &mut rng),
        Err(Error::Input(_))
    ));
    assert!(matches!(
        rpn.losses(&out, &[], &mut rng),
        Err(Error::Shape(_))
    ));
    assert!(matches!(
        backbone.forward(&x.narrow(1, 0, 1).unwrap()),
        Err(Error::Shape(_))
    ));
}

fn count(tensors: &[unetpp::nn::NamedTensor]) -> usize {
    tensors
        .iter()
        .filter(|t| t.trainable)
        .map(|t| t.tensor.elem_count())
        .sum()
}

#[test]
fn parameter_counts_of_the_plain_and_nested_pyramids() {
    use unetpp::maskrcnn::PyramidKind;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let plain = ResNetFpn::new(&resnet(), 256, vb.pp("a")).unwrap();
    let nested = ResNetFpn::with_pyramid(&resnet(), 256, PyramidKind::Nested, vb.pp("b")).unwrap();
    // torchvision's maskrcnn_resnet50_fpn: backbone.body 23,508,032, backbone.fpn 3,344,384.
    assert_eq!(
        count(&prefixed(plain.body().named_tensors(), "x")),
        23_508_032
    );
    assert_eq!(count(&prefixed(plain.pyramid_tensors(), "fpn")), 3_344_384);
    // Nested: the same laterals and outputs plus six 1x1 fusions of 2, 2, 2, 3, 3, 4 inputs.
    assert_eq!(
        count(&prefixed(nested.pyramid_tensors(), "fpn")),
        3_344_384 + 4096 * 256 + 6 * 256
    );
    assert_eq!(nested.pyramid_kind(), PyramidKind::Nested);
}

#[test]
fn nested_pyramid_feeds_the_rpn_and_trains_every_fusion() {
    use unetpp::maskrcnn::PyramidKind;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let cfg = ResNetConfig::resnet18().frozen_bn(true).build().unwrap();
    let backbone =
        ResNetFpn::with_pyramid(&cfg, 32, PyramidKind::Nested, vb.pp("backbone")).unwrap();
    let rpn = Rpn::new(
        &RpnConfig::mask_rcnn().build().unwrap(),
        AnchorGenerator::fpn(),
        32,
        vb.pp("rpn"),
    )
    .unwrap();
    // Odd sizes: 100x140 gives maps of 25x35, 13x18, 7x9, 4x5 and 2x3.
    let x = Tensor::randn(0f32, 1., (1, 3, 100, 140), &Device::Cpu).unwrap();
    let maps = backbone.forward(&x).unwrap();
    let dims: Vec<_> = maps
        .iter()
        .map(|m| (m.dim(2).unwrap(), m.dim(3).unwrap()))
        .collect();
    assert_eq!(dims, vec![(25, 35), (13, 18), (7, 9), (4, 5), (2, 3)]);
    let out = rpn.forward((100, 140), &[(100, 140)], &maps, true).unwrap();
    assert!(out.boxes[0].dim(0).unwrap() > 0);
    let gt = [Tensor::new(&[[10f32, 20., 60., 90.]], &Device::Cpu).unwrap()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let losses = rpn.losses(&out, &gt, &mut rng).unwrap();
    let grads = (losses.objectness + losses.box_reg)
        .unwrap()
        .backward()
        .unwrap();
    let fusions: Vec<_> = prefixed(backbone.pyramid_tensors(), "fpn")
        .into_iter()
        .filter(|t| t.name.contains(".nested."))
        .collect();
    assert_eq!(fusions.len(), 12);
    for t in &fusions {
        let g = grads
            .get(&t.tensor)
            .unwrap_or_else(|| panic!("no gradient for {}", t.name));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {}", t.name);
    }
}

#[test]
fn weight_names_are_torchvision_state_dict_keys() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/maskrcnn.safetensors"
    );
    let meta = unetpp::weights::load_metadata(path).unwrap();
    let want: Vec<&str> = meta["state_dict_keys"]
        .split(',')
        .filter(|k| !k.ends_with("num_batches_tracked"))
        .collect();
    let varmap = VarMap::new();
    let model = MaskRcnn::new(
        &fixture_config(),
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut ours: Vec<String> = model.named_tensors().into_iter().map(|t| t.name).collect();
    let mut want: Vec<String> = want.into_iter().map(String::from).collect();
    ours.sort();
    want.sort();
    assert_eq!(ours, want);
    // A missing tensor is named.
    let mut tensors = formula_weights(model.named_tensors());
    tensors.remove("roi_heads.box_head.fc6.weight");
    match MaskRcnn::from_torchvision(&fixture_config(), tensors, &Device::Cpu) {
        Err(Error::Weights { name, .. }) => assert!(name.contains("fc6"), "{name}"),
        other => panic!("expected Error::Weights, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn rpn_trains_in_f64() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let cfg = ResNetConfig::resnet18().frozen_bn(true).build().unwrap();
    let backbone = ResNetFpn::new(&cfg, 16, vb.pp("backbone")).unwrap();
    let rpn = Rpn::new(
        &RpnConfig::mask_rcnn().build().unwrap(),
        AnchorGenerator::fpn(),
        16,
        vb.pp("rpn"),
    )
    .unwrap();
    let x = Tensor::randn(0f64, 1., (1, 3, 64, 64), &Device::Cpu).unwrap();
    let maps = backbone.forward(&x).unwrap();
    let out = rpn.forward((64, 64), &[(64, 64)], &maps, true).unwrap();
    assert_eq!(out.boxes[0].dtype(), DType::F64);
    let gt = [Tensor::new(&[[4f64, 4., 40., 50.]], &Device::Cpu).unwrap()];
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let l = rpn.losses(&out, &gt, &mut rng).unwrap();
    let total = (l.objectness + l.box_reg)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    assert!(total.is_finite());
}

#[test]
fn trainable_vars_follow_torchvision_trainable_backbone_layers() {
    use unetpp::maskrcnn::trainable_vars;
    let varmap = VarMap::new();
    let cfg = MaskRcnnConfig::compact(2, 16, 64).build().unwrap();
    let _m = MaskRcnn::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let all = varmap.all_vars().len();
    let names = |n: usize| -> usize { trainable_vars(&varmap, n).unwrap().len() };
    assert_eq!(names(5), all);
    assert!(names(3) < names(4) && names(4) < names(5));
    assert!(names(0) < names(3));
    assert!(trainable_vars(&varmap, 6).is_err());
    // With 3, nothing of conv1, bn1 or layer1 is left.
    let kept = trainable_vars(&varmap, 3).unwrap();
    let data = varmap.data().lock().unwrap();
    let frozen: Vec<&String> = data
        .keys()
        .filter(|k| k.starts_with("backbone.body.layer1") || k.starts_with("backbone.body.conv1"))
        .collect();
    assert!(!frozen.is_empty());
    for k in frozen {
        assert!(
            !kept
                .iter()
                .any(|v| v.as_tensor().id() == data[k].as_tensor().id()),
            "{k}"
        );
    }
}

#[test]
fn config_validation_names_the_field() {
    let field = |r: unetpp::Result<MaskRcnnConfig>| match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    let base = || MaskRcnnConfig::mask_rcnn(91);
    assert_eq!(field(base().channels(128).build()), "roi_heads.in_channels");
    assert_eq!(field(base().channels(0).build()), "channels");
    assert_eq!(field(MaskRcnnConfig::mask_rcnn(1).build()), "num_classes");
    assert_eq!(
        field(base().trainable_backbone_layers(6).build()),
        "trainable_backbone_layers"
    );
    let uneven = AnchorGenerator::new(
        vec![vec![32.0], vec![64.0, 128.0]],
        vec![vec![1.0], vec![1.0]],
    )
    .unwrap();
    assert_eq!(field(base().anchors(uneven).build()), "anchors");
    // The parts' own checks name their fields.
    let rpn = RpnConfig::mask_rcnn;
    assert_eq!(field(base().rpn(rpn().min_size(-1.0)).build()), "min_size");
    assert_eq!(
        field(
            base()
                .transform(RcnnTransform::mask_rcnn().max_size(0))
                .build()
        ),
        "max_size"
    );
    let rpn_field = |b: RpnConfigBuilder| match b.build() {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(rpn_field(rpn().fg_iou_thresh(f64::NAN)), "fg_iou_thresh");
    assert_eq!(rpn_field(rpn().bg_iou_thresh(0.8)), "bg_iou_thresh");
    assert_eq!(
        rpn_field(rpn().batch_size_per_image(0)),
        "batch_size_per_image"
    );
    assert_eq!(rpn_field(rpn().positive_fraction(1.5)), "positive_fraction");
    assert_eq!(rpn_field(rpn().nms_thresh(f64::INFINITY)), "nms_thresh");
    assert_eq!(rpn_field(rpn().min_size(f64::NAN)), "min_size");
}

#[test]
fn configs_round_trip_through_their_builders() {
    let cfg = MaskRcnnConfig::compact(3, 32, 96)
        .rpn(RpnConfig::mask_rcnn().post_nms_top_n(500, 50))
        .build()
        .unwrap();
    assert_eq!(cfg.to_builder().build().unwrap(), cfg);
    assert_eq!(cfg.rpn().to_builder().build().unwrap(), *cfg.rpn());
    assert_eq!(cfg.rpn().post_nms_top_n(), (500, 50));
    assert_eq!(
        cfg.transform().to_builder().build().unwrap(),
        *cfg.transform()
    );
    assert_eq!(
        cfg.roi_heads().to_builder().build().unwrap(),
        *cfg.roi_heads()
    );
    assert_eq!(
        RpnConfig::default(),
        RpnConfig::mask_rcnn().build().unwrap()
    );
}

#[cfg(feature = "serde")]
#[test]
fn configs_are_serde() {
    fn serde<T: serde::Serialize + serde::de::DeserializeOwned>() {}
    serde::<MaskRcnnConfig>();
    serde::<unetpp::maskrcnn::MaskRcnnConfigBuilder>();
    serde::<RpnConfig>();
    serde::<RoiHeadsConfig>();
    serde::<RcnnTransform>();
    serde::<AnchorGenerator>();
    serde::<unetpp::maskrcnn::PyramidKind>();
}
