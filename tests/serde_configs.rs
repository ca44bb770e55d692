//! With the `serde` feature every configuration survives JSON, and reading one validates it as
//! `build()` does: a bad value is the same `Error::Config`, naming the field.
//! (`cargo test --release --features serde --test serde_configs`; CI runs it.)

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use unetpp::data::instances::NucleiConfig;
use unetpp::data::synthetic::SyntheticConfig;
use unetpp::encoders::ResNetConfig;
use unetpp::interop::monai::MonaiConfig;
use unetpp::interop::smp::SmpConfig;
use unetpp::maskrcnn::{MaskRcnnConfig, RcnnTransform, RoiHeadsConfig, RpnConfig};
use unetpp::prelude::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) -> String {
    let json = serde_json::to_string(value).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, value, "{json}");
    json
}

/// `json` with the first `"key":old` replaced by `"key":new`, read back as `T`: the error.
fn with_bad<T: DeserializeOwned + Debug>(json: &str, key: &str, new: &str) -> String {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let start = at + key.len() + 3;
    let end = start
        + json[start..]
            .find([',', '}'])
            .unwrap_or_else(|| panic!("no end of {key} in {json}"));
    let bad = format!("{}{new}{}", &json[..start], &json[end..]);
    serde_json::from_str::<T>(&bad)
        .expect_err(&format!("{bad} must be refused"))
        .to_string()
}

#[test]
fn segmentation_configurations_round_trip_and_validate() {
    let cfg = UNetPlusPlusConfig::nested_unet()
        .widths([4, 8, 16])
        .depth(2)
        .norm(Norm::Group(2))
        .build()
        .unwrap();
    let json = round_trip(&cfg);
    let e = with_bad::<UNetPlusPlusConfig>(&json, "depth", "0");
    assert!(e.contains("depth"), "{e}");

    let json = round_trip(&ResNetConfig::resnet50().bn_eps(0.0).build().unwrap());
    let e = with_bad::<ResNetConfig>(&json, "bn_eps", "-1.0");
    assert!(e.contains("bn_eps"), "{e}");

    let json = round_trip(&SmpConfig::resnet34().classes(3).build().unwrap());
    let e = with_bad::<SmpConfig>(&json, "classes", "0");
    assert!(e.contains("classes"), "{e}");
    round_trip(&MonaiConfig::builder().build().unwrap());
}

#[test]
fn data_and_detection_configurations_round_trip_and_validate() {
    let json = round_trip(&SyntheticConfig::builder().samples(5).build().unwrap());
    let e = with_bad::<SyntheticConfig>(&json, "height", "2");
    assert!(e.contains("height"), "{e}");
    round_trip(&NucleiConfig::builder().build().unwrap());

    let cfg = MaskRcnnConfig::compact(3, 16, 64).build().unwrap();
    round_trip(&cfg);
    round_trip(
        &cfg.to_builder()
            .pyramid(unetpp::maskrcnn::PyramidKind::Nested)
            .build()
            .unwrap(),
    );
    let json = round_trip(&RpnConfig::mask_rcnn().build().unwrap());
    let e = with_bad::<RpnConfig>(&json, "positive_fraction", "1.5");
    assert!(e.contains("positive_fraction"), "{e}");
    round_trip(&RoiHeadsConfig::mask_rcnn().build().unwrap());
    round_trip(&RcnnTransform::mask_rcnn().build().unwrap());
}
