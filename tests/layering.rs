//! The module layering of `docs/ARCHITECTURE.md`, checked on the source: each top-level
//! module of `src/` names (`crate::…`, outside comments) only the modules below it. A new
//! dependency either fits the table here and in the document, or the design changes both.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod common;

/// Each top-level module and the modules it may use (the crate's `Error` and `Result` are
/// open to all).
const ALLOWED: &[(&str, &[&str])] = &[
    ("error", &[]),
    ("device", &[]),
    ("fsio", &[]),
    ("ops", &[]),
    ("nn", &["ops"]),
    ("weights", &["fsio", "nn"]),
    ("encoders", &["nn", "ops", "weights"]),
    ("nested", &["encoders", "nn", "ops", "weights"]),
    ("unet", &["nested", "nn", "weights"]),
    ("model", &["nested", "nn", "unet", "weights"]),
    ("loss", &["nested", "ops"]),
    ("metrics", &["ops"]),
    ("data", &["fsio", "ops"]),
    (
        "train",
        &[
            "data", "loss", "metrics", "model", "nested", "nn", "unet", "weights",
        ],
    ),
    ("inference", &["metrics", "model"]),
    (
        "interop",
        &["encoders", "model", "nested", "nn", "ops", "weights"],
    ),
    (
        "maskrcnn",
        &["data", "encoders", "loss", "nested", "nn", "ops", "weights"],
    ),
];

/// The first path segments named after `crate::` in `code` (`crate::{a, b::c}` names `a`
/// and `b`).
fn crate_names(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, String::new());
            for ch in group.chars() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(ch);
                }
            }
            names.push(item);
        } else {
            names.push(rest.to_string());
        }
    }
    names
        .into_iter()
        .filter_map(|n| {
            let n = n.trim();
            let first: String = n
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            (!first.is_empty()).then_some(first)
        })
        .collect()
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut violations = Vec::new();
    for file in common::src_files() {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let deps = allowed.get(module.as_str()).unwrap_or_else(|| {
            panic!("src/{module} is not in the layering table of tests/layering.rs (and docs/ARCHITECTURE.md)")
        });
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for name in crate_names(code) {
                let ok = name == module
                    || name == "Error"
                    || name == "Result"
                    || deps.contains(name.as_str());
                if !ok {
                    violations.push(format!("{}:{}: uses crate::{name}", rel.display(), n + 1));
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn crate_paths_are_read_in_groups_and_alone() {
    assert_eq!(
        crate_names("use crate::{nn::{Conv, ConvBn}, weights, Error};"),
        ["nn", "weights", "Error"]
    );
    assert_eq!(crate_names("let y = crate::ops::conv1x1(x)?;"), ["ops"]);
    assert!(crate_names("let x = 1;").is_empty());
}
