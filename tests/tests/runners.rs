//! End-to-end: `tandem run` on a tiny two-stage manifest (the tiny LLaMA fixture, 20 IU X-ray reports for stage
//! 1, 12 SYNTHETIC rows in 2 folds for stage 2) with two real local workers running the planner's job kinds:
//! data preparation, training, evaluation and the report.

use std::process::Command;

use tandem_tests::{TINY_STAGE1_TRAINING, bins, tiny_manifest};

#[test]
fn tandem_run_trains_and_evaluates_a_tiny_two_stage_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny.toml");
    std::fs::write(
        &path,
        tiny_manifest(
            "runners-e2e",
            "none",
            TINY_STAGE1_TRAINING,
            r#""base:stage1", "stage1:stage1", "two-stage:stage1", "stage1:stage2", "two-stage:stage2""#,
        ),
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let output = Command::new(&bins().tandem)
        .current_dir(tmp.path())
        .arg("run")
        .arg(&path)
        .args(["--workers", "2", "--threads", "1"])
        .arg("--store")
        .arg(tmp.path().join(".tandem/store"))
        .arg("--out")
        .arg(&out_dir)
        .env_remove("TANDEM_TOKEN")
        .output()
        .expect("running tandem run");
    let worker_logs: String = (0..2)
        .map(|i| {
            std::fs::read_to_string(tmp.path().join(format!(".tandem/worker-{i}.log")))
                .unwrap_or_default()
        })
        .collect();
    assert!(
        output.status.success(),
        "tandem run failed:\n{}\n{}\nworkers:\n{worker_logs}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Every eval job streamed its corpus scores.
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("status.json")).unwrap()).unwrap();
    let jobs = status["jobs"].as_array().expect("status.jobs");
    let evals: Vec<(String, String)> = jobs
        .iter()
        .filter(|j| j["kind"] == "eval")
        .map(|j| {
            (
                j["id"].as_str().unwrap().to_string(),
                j["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // base:stage1, stage1:stage1, and per fold (2) two-stage:stage1 (the holdout test set), stage1:stage2 and
    // two-stage:stage2.
    assert_eq!(evals.len(), 8, "eval jobs: {evals:?}");
    let metrics = std::fs::read_to_string(out_dir.join("metrics.csv")).unwrap();
    for (id, name) in &evals {
        for key in ["eval/bleu4", "eval/rougeL", "eval/meteor"] {
            let value: f64 = metrics
                .lines()
                .filter(|l| l.starts_with(id.as_str()))
                .find_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f.len() == 6 && f[2] == key).then(|| f[4].parse().unwrap())
                })
                .unwrap_or_else(|| panic!("{name}: no {key} in metrics.csv:\n{metrics}"));
            assert!((0.0..=1.0).contains(&value), "{name}: {key} = {value}");
        }
    }
    // Training curves were streamed for each of the 3 train jobs (stage 1, stage 2 x 2 folds).
    let train_loss_lines = metrics
        .lines()
        .filter(|l| l.contains(",train_loss,"))
        .count();
    assert_eq!(train_loss_lines, 3 * 2, "train_loss points:\n{metrics}");
    // The report tables and each eval's predictions were exported.
    let artifacts = out_dir.join("artifacts");
    let mut names = Vec::new();
    for dir in std::fs::read_dir(&artifacts).unwrap().flatten() {
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            names.push(file.file_name().to_string_lossy().into_owned());
        }
    }
    assert_eq!(names.iter().filter(|n| *n == "predictions.csv").count(), 8);
    assert!(names.iter().any(|n| n == "results.md"), "{names:?}");
    // Table 4.1 has the two-stage row (the forgetting check), averaged over both folds.
    let tables = std::fs::read_to_string(out_dir.join("results.md")).unwrap();
    let table_41 = tables
        .split("## ")
        .find(|s| s.starts_with("Table 4.1: stage-1 task"))
        .unwrap_or_else(|| panic!("no Table 4.1 in:\n{tables}"));
    let row = table_41
        .lines()
        .find(|l| l.starts_with("| two-stage"))
        .unwrap_or_else(|| panic!("no two-stage row in:\n{table_41}"));
    assert_eq!(row.split('|').nth(2).map(str::trim), Some("2"), "{row}");
    assert_eq!(
        names
            .iter()
            .filter(|n| *n == "adapter_model.safetensors")
            .count(),
        3
    );
}

/// `model.compute_dtype = "bf16"` reaches the CPU engine through the plan and the worker: the stage-1 model
/// trains and is scored with its frozen weights packed for the bf16 GEMM (the worker says so), or, on a CPU
/// without AVX-512 BF16, the training job fails with that reason rather than computing in f32 under a bf16 id.
#[test]
fn a_bf16_manifest_trains_on_the_bf16_gemm_or_names_what_the_cpu_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny-bf16.toml");
    let manifest = tiny_manifest(
        "runners-bf16",
        "none",
        TINY_STAGE1_TRAINING,
        r#""base:stage1", "stage1:stage1""#,
    );
    assert!(manifest.contains("compute_dtype = \"f32\""));
    std::fs::write(
        &path,
        manifest.replace("compute_dtype = \"f32\"", "compute_dtype = \"bf16\""),
    )
    .unwrap();
    let output = Command::new(&bins().tandem)
        .current_dir(tmp.path())
        .arg("run")
        .arg(&path)
        .args(["--workers", "1", "--threads", "1"])
        .arg("--store")
        .arg(tmp.path().join(".tandem/store"))
        .arg("--out")
        .arg(tmp.path().join("out"))
        .env_remove("TANDEM_TOKEN")
        .output()
        .expect("running tandem run");
    let log = std::fs::read_to_string(tmp.path().join(".tandem/worker-0.log")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if tandem_worker::engine::bf16::simd_available() {
        assert!(
            output.status.success(),
            "tandem run failed:\n{stdout}\n{}\nworker:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
        // One training job and two evaluations each loaded the model packed (or reused it packed).
        assert!(
            log.contains("frozen weights packed in bf16"),
            "no packing in the worker's log:\n{log}"
        );
    } else {
        assert!(!output.status.success(), "{stdout}");
        assert!(stdout.contains("AVX-512 BF16"), "{stdout}\nworker:\n{log}");
    }
}
