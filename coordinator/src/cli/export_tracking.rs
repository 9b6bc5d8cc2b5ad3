//! `tandem export ID --format mlflow|tensorboard`: an experiment's jobs as tracking runs (`crate::tracking`):
//! metrics with steps and wall-clock times, tags for the job id, kind, stage, fold and manifest hash, the
//! training settings of train jobs (a sweep point's own values) as params, and, for MLflow, the output artifacts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tandem_coordinator::tracking::{self, Experiment, Point, Run, RunStatus};
use tandem_experiments::manifest::{self, LoadOptions, Manifest, Stage};
use tandem_proto as pb;

use super::client::{Client, download, fetch_results, safe_file_name};
use super::status::job_state;

/// Which tracking format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tracking {
    Mlflow,
    Tensorboard,
}

fn status_of(job: &pb::JobStatus) -> RunStatus {
    match job_state(job) {
        "succeeded" => RunStatus::Finished,
        "failed" => RunStatus::Failed,
        "cancelled" => RunStatus::Killed,
        "running" | "leased" => RunStatus::Running,
        _ => RunStatus::Scheduled,
    }
}

/// The manifest as stored, read without its files (only its settings are wanted here).
fn stored_manifest(reply: &pb::ResultsReply) -> Option<Manifest> {
    if reply.manifest_format != "toml" {
        return None;
    }
    let text = String::from_utf8(reply.manifest.clone()).ok()?;
    manifest::parse_str(
        &text,
        Path::new("manifest.toml"),
        LoadOptions { check_files: false },
    )
    .ok()
}

/// The training settings of a train job of `stage` (with its sweep point's values when its name says
/// `point N:`).
fn train_params(manifest: &Manifest, stage: Stage, name: &str) -> BTreeMap<String, String> {
    let spec = manifest.stage(stage);
    let (mut lora, mut training) = (manifest.lora.clone(), spec.training.clone());
    let point = name
        .split(", point ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .and_then(|n| n.trim().parse::<usize>().ok());
    if let (Some(n), Some(sweep)) = (point, &manifest.training_sweep)
        && let Some(p) = sweep.points.get(n)
    {
        (lora, training) = p.apply(&lora, &training);
    }
    BTreeMap::from([
        ("seed".into(), manifest.seed.to_string()),
        ("lora.r".into(), lora.r.to_string()),
        ("lora.alpha".into(), lora.alpha.to_string()),
        ("lora.dropout".into(), lora.dropout.to_string()),
        ("lora.target_modules".into(), lora.target_modules.join(",")),
        ("training.lr".into(), training.lr.to_string()),
        (
            "training.batch_size".into(),
            training.batch_size.to_string(),
        ),
        (
            "training.grad_accum".into(),
            training.grad_accum.to_string(),
        ),
        ("training.epochs".into(), training.epochs.to_string()),
        (
            "training.warmup_steps".into(),
            training.warmup_steps.to_string(),
        ),
        (
            "training.weight_decay".into(),
            training.weight_decay.to_string(),
        ),
        (
            "training.max_steps".into(),
            training
                .max_steps
                .map_or_else(|| "none".into(), |m| m.to_string()),
        ),
    ])
}

/// The experiment's jobs as runs; output artifacts are downloaded into `staging` when `with_artifacts`.
pub async fn experiment(
    client: &mut Client,
    id: &str,
    staging: &Path,
    with_artifacts: bool,
) -> anyhow::Result<Experiment> {
    let reply = fetch_results(client, id).await?;
    let status = reply.status.clone().unwrap_or_default();
    let summary = status.summary.clone().unwrap_or_default();
    let manifest = stored_manifest(&reply);
    let placements: BTreeMap<&str, &pb::JobPlacement> = reply
        .placements
        .iter()
        .map(|p| (p.job_id.as_str(), p))
        .collect();
    let mut runs = Vec::with_capacity(status.jobs.len());
    for job in &status.jobs {
        let mut metrics: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        for s in reply.series.iter().filter(|s| s.job_id == job.id) {
            let points = metrics.entry(s.name.clone()).or_default();
            for (i, (&step, &value)) in s.steps.iter().zip(&s.values).enumerate() {
                let time_ms = s
                    .times_ms
                    .get(i)
                    .copied()
                    .filter(|t| *t > 0)
                    .unwrap_or(summary.created_ms);
                points.push(Point {
                    time_ms,
                    value,
                    step: step as i64,
                });
            }
        }
        let times = metrics.values().flatten().map(|p| p.time_ms);
        let start_ms = times.clone().min().unwrap_or(summary.created_ms);
        let end_ms = times.max().unwrap_or(summary.created_ms);
        let mut tags = BTreeMap::from([
            ("tandem.job_id".to_owned(), job.id.clone()),
            ("tandem.kind".to_owned(), job.kind.clone()),
            ("tandem.state".to_owned(), job_state(job).to_owned()),
            ("tandem.experiment_id".to_owned(), summary.id.clone()),
            (
                "tandem.manifest_sha256".to_owned(),
                status.manifest_sha256.clone(),
            ),
        ]);
        let mut params = BTreeMap::from([("kind".to_owned(), job.kind.clone())]);
        if let Some(p) = placements.get(job.id.as_str()) {
            for (key, value) in [
                ("stage", p.stage.clone()),
                ("fold", p.fold.map_or_else(String::new, |f| f.to_string())),
                ("model_stage", p.model_stage.clone()),
                ("task", p.task.clone()),
            ] {
                if !value.is_empty() {
                    tags.insert(format!("tandem.{key}"), value.clone());
                    params.insert(key.to_owned(), value);
                }
            }
            if let Some(sweep) = &p.sweep {
                params.insert(
                    format!("sweep.{}", sweep.parameter),
                    sweep.value.to_string(),
                );
            }
            let stage = Stage::ALL.into_iter().find(|s| s.as_str() == p.stage);
            if let (Some(m), Some(stage), "train") = (&manifest, stage, job.kind.as_str()) {
                params.extend(train_params(m, stage, &job.name));
            }
        }
        let mut artifacts = Vec::new();
        if with_artifacts {
            for a in reply
                .artifacts
                .iter()
                .filter(|a| a.job_id == job.id && a.role == "output")
            {
                let path: PathBuf = staging.join(format!(
                    "{}-{}",
                    &job.id[..8.min(job.id.len())],
                    safe_file_name(&a.name)
                ));
                let bytes = download(client, &a.sha256)
                    .await
                    .with_context(|| format!("downloading {} of {}", a.name, job.name))?;
                std::fs::write(&path, bytes)
                    .with_context(|| format!("writing {}", path.display()))?;
                artifacts.push((a.name.clone(), path));
            }
        }
        runs.push(Run {
            job_id: job.id.clone(),
            name: job.name.clone(),
            status: status_of(job),
            start_ms,
            end_ms,
            user: summary.submitter.clone(),
            params,
            tags,
            metrics,
            artifacts,
        });
    }
    Ok(Experiment {
        id: summary.id.clone(),
        name: summary.name.clone(),
        created_ms: summary.created_ms,
        runs,
    })
}

/// Writes `DIR/mlruns` or `DIR/tensorboard`; returns a line saying what was written.
pub async fn export(
    client: &mut Client,
    id: &str,
    out: &Path,
    format: Tracking,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::fs::canonicalize(out).with_context(|| format!("resolving {}", out.display()))?;
    // Artifacts are downloaded here first, copied into the runs, and the folder removed.
    let staging = out.join(".tandem-staging");
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let experiment = experiment(client, id, &staging, format == Tracking::Mlflow).await;
    let written = experiment.and_then(|experiment| write(&out, &experiment, format));
    let _ = std::fs::remove_dir_all(&staging);
    written
}

fn write(out: &Path, experiment: &Experiment, format: Tracking) -> anyhow::Result<String> {
    let points: usize = experiment
        .runs
        .iter()
        .flat_map(|r| r.metrics.values())
        .map(Vec::len)
        .sum();
    Ok(match format {
        Tracking::Mlflow => {
            let root = out.join("mlruns");
            let number = tracking::mlflow::write_store(&root, experiment)?;
            format!(
                "MLflow: {} runs, {points} metric points -> {} (experiment {number}; open with \
                 MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri {})",
                experiment.runs.len(),
                root.display(),
                root.display()
            )
        }
        Tracking::Tensorboard => {
            let root = out.join("tensorboard");
            let files = tracking::tensorboard::write_events(&root, experiment)?;
            format!(
                "TensorBoard: {} event files, {points} scalars -> {} (open with tensorboard --logdir {})",
                files.len(),
                root.display(),
                root.display()
            )
        }
    })
}
