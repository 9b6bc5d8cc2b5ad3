//! The GPU scripts run every GPU test: each `tests/gpu_*.rs` file has a binary that `gpu-prepare.sh` copies and
//! that `gpu-check.sh` runs. A new GPU test that is not wired into both would otherwise never run on the one
//! GPU session that has a few minutes for it.

use std::path::Path;

#[test]
fn every_gpu_test_file_is_built_by_gpu_prepare_and_run_by_gpu_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prepare = std::fs::read_to_string(root.join("gpu-prepare.sh")).unwrap();
    let check = std::fs::read_to_string(root.join("gpu-check.sh")).unwrap();
    let mut stems: Vec<String> = std::fs::read_dir(root.join("tests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gpu_") && n.ends_with(".rs"))
        .map(|n| n.trim_end_matches(".rs").to_string())
        .filter(|n| n != "gpu_scripts")
        .collect();
    stems.sort();
    assert!(stems.len() >= 5, "found only {stems:?}");
    for stem in &stems {
        // gpu-prepare.sh pairs each test binary's crate name with the name it is copied to: "stem:name".
        let pair = prepare
            .split(['"', ' '])
            .find(|p| p.starts_with(&format!("{stem}:")))
            .unwrap_or_else(|| {
                panic!("gpu-prepare.sh does not copy the binary of tests/{stem}.rs")
            });
        let name = &pair[stem.len() + 1..];
        assert!(
            check.contains(&format!("\"$bin/{name}\"")),
            "gpu-check.sh never runs {name} (tests/{stem}.rs)"
        );
    }
}
