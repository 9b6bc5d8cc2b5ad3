//! End-to-end training sweeps on the tiny LLaMA with two real workers: the same four learning rates run as a
//! full grid and under ASHA (rungs at 1, 3 and 9 updates, reduction factor 3). One learning rate is planted to
//! win by far; ASHA must choose the same point while spending fewer optimizer updates, record where it stopped
//! the others, and `tandem results --sweep` must show it.

use std::time::Duration;

use tandem_tests::{Lab, tiny_manifest, wait_for};

const TRAINING: &str = "batch_size = 1
grad_accum = 1
lr = 1e-3
warmup_steps = 0
epochs = 1.0
max_steps = 9
eval_every = 1
log_every = 1
checkpoint_every = 9
max_length = 256";

/// Point 0 (lr 2e-3) is the planted winner: the others barely move the adapter in 9 updates.
const SWEEP: &str = r#"
[training_sweep]
stage = "stage1"
[training_sweep.space]
"training.lr" = [2e-3, 1e-7, 1e-6, 1e-5]
"#;

const ASHA: &str = "
[training_sweep.asha]
grace_period = 1
reduction_factor = 3
";

/// Runs `manifest` to success and returns `tandem results --sweep --format json` as JSON.
fn run_sweep(lab: &Lab, name: &str, manifest: String) -> serde_json::Value {
    let path = lab.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, manifest).unwrap();
    let id = lab
        .tandem_ok(&["submit", path.to_str().unwrap()])
        .trim()
        .to_string();
    wait_for(
        &format!("{name} to finish"),
        Duration::from_secs(300),
        || {
            let status = lab.status(&id);
            match status["state"].as_str() {
                Some("succeeded") => Some(()),
                Some("failed") => panic!("{name} failed: {status:#}"),
                _ => None,
            }
        },
    );
    let json = lab.tandem_ok(&["results", &id, "--sweep", "--format", "json"]);
    let records: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(records.as_array().map(Vec::len), Some(1), "{json}");
    let markdown = lab.tandem_ok(&["results", &id, "--sweep"]);
    assert!(
        markdown.contains("selected by val_loss (lower is better)"),
        "{markdown}"
    );
    records[0].clone()
}

fn steps(record: &serde_json::Value) -> Vec<u64> {
    record["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["outcome"]["steps"].as_u64().unwrap())
        .collect()
}

#[test]
fn asha_chooses_the_grids_point_with_fewer_updates() {
    let lab = Lab::start();
    let _workers = [lab.worker("w0"), lab.worker("w1")];
    let cells = r#""stage1:stage1""#;
    let grid = run_sweep(
        &lab,
        "sweep-grid",
        tiny_manifest("sweep-grid", "none", TRAINING, cells) + SWEEP,
    );
    let asha = run_sweep(
        &lab,
        "sweep-asha",
        tiny_manifest("sweep-asha", "none", TRAINING, cells) + SWEEP + ASHA,
    );

    assert_eq!(
        steps(&grid),
        vec![9, 9, 9, 9],
        "the grid runs every point in full"
    );
    assert_eq!(
        grid["chosen"], 0,
        "the planted point wins the grid: {grid:#}"
    );
    assert_eq!(
        asha["chosen"], grid["chosen"],
        "ASHA chooses the same point: {asha:#}"
    );
    let spent: u64 = steps(&asha).iter().sum();
    assert!(
        spent < 36,
        "ASHA spent {spent} updates, the grid 36: {asha:#}"
    );
    let stopped: Vec<&serde_json::Value> = asha["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["outcome"]["asha_stop"].is_null())
        .collect();
    assert!(!stopped.is_empty(), "{asha:#}");
    for p in &stopped {
        let stop = &p["outcome"]["asha_stop"];
        assert_eq!(p["outcome"]["steps"], stop["step"], "{p:#}");
        assert!(stop["val_loss"].as_f64() > stop["cutoff"].as_f64(), "{p:#}");
        assert_ne!(p["point"], asha["chosen"]);
    }
    eprintln!(
        "grid: 36 updates; ASHA: {spent} updates ({} points stopped)",
        stopped.len()
    );
}

#[test]
fn a_sweep_larger_than_max_points_is_queued_only_with_yes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.toml");
    let big = SWEEP.replace("stage = \"stage1\"", "stage = \"stage1\"\nmax_points = 3");
    std::fs::write(
        &path,
        tiny_manifest("big", "none", TRAINING, r#""stage1:stage1""#) + &big,
    )
    .unwrap();
    // No coordinator listens here: the size check comes first, and with --yes the command gets as far as
    // connecting (exit 5, unreachable).
    let url = "http://127.0.0.1:9";
    let refused = tandem_tests::tandem(url, Some("t"), &["submit", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "training_sweep: 4 points (4 training runs) is more than max_points = 3; pass --yes"
        ),
        "{stderr}"
    );
    let yes = tandem_tests::tandem(url, Some("t"), &["submit", path.to_str().unwrap(), "--yes"]);
    assert_eq!(
        yes.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&yes.stderr)
    );
}
