//! `tandem export --format mlflow|tensorboard` read back by the tools themselves: a tiny experiment (data
//! preparation, stage-1 training, an evaluation, the report) runs on a real worker, is exported as plain files,
//! as an MLflow file store and as TensorBoard event files, and `scripts/export-check/check.py` opens the last two
//! with the `mlflow` package and TensorBoard's event reader and compares every point with metrics.csv.

use std::process::Command;
use std::time::Duration;

use tandem_tests::{Lab, TINY_STAGE1_TRAINING, tiny_manifest, wait_for};

#[test]
fn mlflow_and_tensorboard_read_the_exports_back_point_for_point() {
    let lab = Lab::start();
    let _worker = lab.worker("w0");
    let manifest = lab.dir.path().join("export.toml");
    std::fs::write(
        &manifest,
        tiny_manifest(
            "export-formats",
            "none",
            TINY_STAGE1_TRAINING,
            r#""stage1:stage1""#,
        ),
    )
    .unwrap();
    let id = lab
        .tandem_ok(&["submit", manifest.to_str().unwrap()])
        .trim()
        .to_string();
    let status = wait_for("the experiment to finish", Duration::from_secs(300), || {
        let status = lab.status(&id);
        match status["state"].as_str() {
            Some("succeeded") => Some(status),
            Some("failed") => panic!("{status:#}"),
            _ => None,
        }
    });
    let jobs: Vec<&str> = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    let out = lab.dir.path().join("export");
    let out_s = out.to_str().unwrap();
    lab.tandem_ok(&["export", &id, "--out", out_s]);
    let mlflow = lab.tandem_ok(&["export", &id, "--out", out_s, "--format", "mlflow"]);
    assert!(
        mlflow.contains(&format!("MLflow: {} runs", jobs.len())),
        "{mlflow}"
    );
    let tensorboard = lab.tandem_ok(&["export", &id, "--out", out_s, "--format", "tensorboard"]);
    assert!(tensorboard.contains("TensorBoard: "), "{tensorboard}");
    assert!(
        !out.join(".tandem-staging").exists(),
        "the staging folder is removed"
    );

    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let setup = Command::new(repo.join("scripts/export-check/setup.sh"))
        .output()
        .expect("running scripts/export-check/setup.sh");
    assert!(
        setup.status.success(),
        "setup failed:\n{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let python = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .unwrap()
        .to_string();
    let check = Command::new(repo.join(python))
        .arg(repo.join("scripts/export-check/check.py"))
        .args(["--mlruns", out.join("mlruns").to_str().unwrap()])
        .args(["--tensorboard", out.join("tensorboard").to_str().unwrap()])
        .args(["--metrics", out.join("metrics.csv").to_str().unwrap()])
        .args(["--experiment-name", "export-formats"])
        .args(["--jobs", &jobs.join(",")])
        .output()
        .expect("running check.py");
    let stdout = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(stdout.starts_with("OK mlflow: 4 runs"), "{stdout}");
    eprintln!("{stdout}");
}
