//! The GPU scripts run every GPU test: each `tests/gpu_*.rs` file of this crate, and each `worker/tests/gpu_*.rs`
//! (the kernel engine on the CUDA device), has a binary that `gpu-prepare.sh` copies and that `gpu-check.sh` runs.
//! A new GPU test that is not wired into both would otherwise never run on the one GPU session that has a few
//! minutes for it. The step limits must also fit one 600 s call of the device tool.

use std::path::Path;

/// The `gpu_*.rs` test files of `dir` (without `.rs`), except this one.
fn gpu_test_stems(dir: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("gpu_") && n.ends_with(".rs"))
        .map(|n| n.trim_end_matches(".rs").to_string())
        .filter(|n| n != "gpu_scripts")
        .collect();
    stems.sort();
    stems
}

/// The name `gpu-prepare.sh` copies the test binary of `stem` to: it pairs them as "stem:name".
fn copied_name<'a>(prepare: &'a str, stem: &str) -> &'a str {
    let pair = prepare
        .split(['"', ' '])
        .find(|p| p.starts_with(&format!("{stem}:")))
        .unwrap_or_else(|| panic!("gpu-prepare.sh does not copy the binary of {stem}.rs"));
    &pair[stem.len() + 1..]
}

#[test]
fn every_gpu_test_file_is_built_by_gpu_prepare_and_run_by_gpu_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let prepare = std::fs::read_to_string(root.join("gpu-prepare.sh")).unwrap();
    let check = std::fs::read_to_string(root.join("gpu-check.sh")).unwrap();
    let kernels = gpu_test_stems(&root.join("tests"));
    let worker = gpu_test_stems(&root.join("../worker/tests"));
    assert!(kernels.len() >= 5, "found only {kernels:?}");
    assert!(
        worker.contains(&"gpu_engine".to_string()),
        "found only {worker:?} in worker/tests"
    );
    for stem in kernels.iter().chain(&worker) {
        let name = copied_name(&prepare, stem);
        assert!(
            check.contains(&format!("\"$bin/{name}\"")),
            "gpu-check.sh never runs {name} ({stem}.rs)"
        );
    }
    for stem in &worker {
        let name = copied_name(&prepare, stem);
        assert!(
            prepare.contains(&format!("-p tandem-worker --test {stem} --no-run")),
            "gpu-prepare.sh does not build worker/tests/{stem}.rs"
        );
        // A worker test reads its fixtures from the checkout it runs in, not from where it was built.
        let line = check
            .lines()
            .find(|l| l.contains(&format!("\"$bin/{name}\"")))
            .unwrap_or_default();
        assert!(
            line.contains("TANDEM_WORKER_DIR="),
            "gpu-check.sh runs {name} without TANDEM_WORKER_DIR: {line}"
        );
    }
}

#[test]
fn the_gpu_check_step_limits_fit_one_device_call() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = std::fs::read_to_string(root.join("gpu-check.sh")).unwrap();
    // `step NAME LIMIT ...` lines; a step written twice (the two ways to run the benchmark) counts once.
    let mut limits: Vec<(String, u64)> = Vec::new();
    for line in check.lines().map(str::trim_start) {
        let mut words = line.split_whitespace();
        let (Some("step"), Some(name), Some(limit)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Ok(limit) = limit.parse::<u64>() else {
            continue;
        };
        if !limits.iter().any(|(n, _)| n == name) {
            limits.push((name.to_string(), limit));
        }
    }
    let names: Vec<&str> = limits.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"engine") && names.len() >= 8,
        "steps found: {names:?}"
    );
    let total: u64 = limits.iter().map(|(_, l)| l).sum();
    assert!(
        total < 600,
        "the step limits add up to {total} s: {limits:?}"
    );
}
