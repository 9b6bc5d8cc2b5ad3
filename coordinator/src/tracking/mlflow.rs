//! An MLflow file store (`mlruns/`), laid out as MLflow's `FileStore` writes it (checked against files written by
//! mlflow 3.18): `mlruns/0/meta.yaml` (the Default experiment), `mlruns/<experiment>/meta.yaml`, and per run
//! `meta.yaml`, `params/<key>`, `tags/<key>`, `metrics/<key>` (lines `<timestamp ms> <value> <step>`) and
//! `artifacts/`. MLflow 3 keeps the file store in maintenance mode: open it with `MLFLOW_ALLOW_FILE_STORE=true
//! mlflow ui --backend-store-uri DIR/mlruns`, or move it to a database with `mlflow migrate-filestore`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Experiment, ExportError, Run, RunStatus, io, safe_key};

/// MLflow's numeric experiment id for a Tandem experiment id: the first 15 hex digits as a decimal number (stable,
/// so exporting again into the same folder updates the same experiment).
pub fn experiment_number(id: &str) -> String {
    let hex: String = id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(15)
        .collect();
    u64::from_str_radix(&hex, 16)
        .unwrap_or(1)
        .max(1)
        .to_string()
}

fn status_code(status: RunStatus) -> u8 {
    match status {
        RunStatus::Running => 1,
        RunStatus::Scheduled => 2,
        RunStatus::Finished => 3,
        RunStatus::Failed => 4,
        RunStatus::Killed => 5,
    }
}

/// YAML single-quoted scalar.
fn quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn write(path: &Path, text: &str) -> Result<(), ExportError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    std::fs::write(path, text).map_err(io(path))
}

fn experiment_meta(root: &Path, number: &str, name: &str, created_ms: u64) -> String {
    format!(
        "artifact_location: {}\ncreation_time: {created_ms}\neffective_trace_archival_retention: null\n\
         experiment_id: {}\nlast_update_time: {created_ms}\nlifecycle_stage: active\nname: {}\n\
         trace_location: null\nworkspace: default\n",
        quoted(&format!("file://{}", root.join(number).display())),
        quoted(number),
        quoted(name),
    )
}

/// Writes `experiment` into the file store at `root` (`.../mlruns`, made absolute by the caller); returns the
/// experiment's MLflow id.
pub fn write_store(root: &Path, experiment: &Experiment) -> Result<String, ExportError> {
    let default = root.join("0").join("meta.yaml");
    if !default.exists() {
        write(
            &default,
            &experiment_meta(root, "0", "Default", experiment.created_ms),
        )?;
    }
    let number = experiment_number(&experiment.id);
    let dir = root.join(&number);
    write(
        &dir.join("meta.yaml"),
        &experiment_meta(
            root,
            &number,
            &format!("{} ({})", experiment.name, experiment.id),
            experiment.created_ms,
        ),
    )?;
    for run in &experiment.runs {
        write_run(&dir, &number, run)?;
    }
    Ok(number)
}

fn write_run(experiment_dir: &Path, number: &str, run: &Run) -> Result<(), ExportError> {
    let run_id: String = run.job_id.chars().take(32).collect();
    let dir = experiment_dir.join(&run_id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(&artifacts).map_err(io(&artifacts))?;
    let meta = format!(
        "artifact_uri: {}\nend_time: {}\nentry_point_name: ''\nexperiment_id: {}\nlifecycle_stage: active\n\
         run_id: {run_id}\nrun_name: {}\nsource_name: ''\nsource_type: 4\nsource_version: ''\nstart_time: {}\n\
         status: {}\ntags: []\nuser_id: {}\n",
        quoted(&format!("file://{}", artifacts.display())),
        run.end_ms,
        quoted(number),
        quoted(&run.name),
        run.start_ms,
        status_code(run.status),
        quoted(&run.user),
    );
    write(&dir.join("meta.yaml"), &meta)?;
    write(&dir.join("tags").join("mlflow.runName"), &run.name)?;
    write(&dir.join("tags").join("mlflow.user"), &run.user)?;
    for (key, value) in &run.tags {
        write(&dir.join("tags").join(safe_key(key)), value)?;
    }
    for (key, value) in &run.params {
        write(&dir.join("params").join(safe_key(key)), value)?;
    }
    for (key, points) in &run.metrics {
        let mut lines = String::new();
        for p in points {
            let _ = writeln!(lines, "{} {} {}", p.time_ms, p.value, p.step);
        }
        write(&dir.join("metrics").join(safe_key(key)), &lines)?;
    }
    for (name, path) in &run.artifacts {
        let target = artifacts.join(safe_key(name));
        std::fs::copy(path, &target).map_err(io(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::Point;
    use super::*;

    #[test]
    fn the_store_has_the_file_stores_layout() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("mlruns");
        let experiment = Experiment {
            id: "e000001".into(),
            name: "demo".into(),
            created_ms: 5,
            runs: vec![Run {
                job_id: "f".repeat(64),
                name: "train(stage1)".into(),
                status: RunStatus::Finished,
                start_ms: 10,
                end_ms: 20,
                user: "ana".into(),
                params: BTreeMap::from([("lr".into(), "0.001".into())]),
                tags: BTreeMap::from([("tandem.fold".into(), "2".into())]),
                metrics: BTreeMap::from([(
                    "eval/bleu4".into(),
                    vec![Point {
                        time_ms: 7,
                        value: 0.25,
                        step: 3,
                    }],
                )]),
                artifacts: Vec::new(),
            }],
        };
        let number = write_store(&root, &experiment).unwrap();
        assert_eq!(number, "234881025", "0xe000001");
        let run = root.join(&number).join("f".repeat(32));
        assert_eq!(
            std::fs::read_to_string(run.join("metrics/eval/bleu4")).unwrap(),
            "7 0.25 3\n"
        );
        assert_eq!(
            std::fs::read_to_string(run.join("params/lr")).unwrap(),
            "0.001"
        );
        let meta = std::fs::read_to_string(run.join("meta.yaml")).unwrap();
        assert!(
            meta.contains("status: 3\n") && meta.contains("run_name: 'train(stage1)'\n"),
            "{meta}"
        );
        assert!(root.join("0/meta.yaml").exists());
    }
}
