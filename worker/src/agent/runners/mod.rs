//! The planner's job kinds (`data-prep`, `train`, `eval`, `report`) as worker runners, and the helpers they
//! share: decoding the planned job spec, finding parents' artifacts, bundling checkpoint folders.

pub mod bundle;
pub mod data_prep;
pub mod eval;
pub mod report;
pub mod train;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tandem_experiments::planner::{JobSpec, PartIndices};

use super::{JobContext, RunError, RunnerRegistry};
use crate::engine::EngineError;

/// Artifact of a data-prep job: the split and the usable rows it names.
pub const PREPARED_ARTIFACT: &str = "prepared.json";
/// Artifact of an eval job: its corpus scores as the report reads them.
pub const EVAL_RESULT_ARTIFACT: &str = "eval_result.json";
/// The files of a PEFT adapter, each uploaded as its own artifact.
pub const ADAPTER_FILES: [&str; 2] = ["adapter_config.json", "adapter_model.safetensors"];

/// Registers the four planner kinds.
pub fn register_all(registry: &mut RunnerRegistry) {
    registry.register("data-prep", Arc::new(data_prep::DataPrepRunner));
    registry.register("train", Arc::new(train::TrainRunner));
    registry.register("eval", Arc::new(eval::EvalRunner));
    registry.register("report", Arc::new(report::ReportRunner));
}

/// One usable row of a prepared dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedRow {
    pub row: usize,
    pub input: String,
    pub target: String,
}

/// What a data-prep job hands to train and eval jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreparedArtifact {
    pub rows: tandem_experiments::planner::PreparedRows,
    /// Every row some part names, ascending by row.
    pub examples: Vec<PreparedRow>,
}

impl PreparedArtifact {
    /// The split part of `fold` (the only part when `fold` is `None`).
    pub fn part(&self, fold: Option<usize>) -> Result<&PartIndices, RunError> {
        match fold {
            None if self.rows.parts.len() == 1 => Ok(&self.rows.parts[0]),
            _ => self
                .rows
                .parts
                .iter()
                .find(|p| p.fold == fold)
                .ok_or_else(|| {
                    RunError::permanent(format!(
                        "{PREPARED_ARTIFACT}: no part for fold {fold:?} ({} parts)",
                        self.rows.parts.len()
                    ))
                }),
        }
    }

    /// (input, target) of the rows `indices`.
    pub fn pick(&self, indices: &[usize]) -> Result<Vec<(String, String)>, RunError> {
        indices
            .iter()
            .map(|i| {
                self.examples
                    .binary_search_by_key(i, |e| e.row)
                    .map(|k| {
                        let e = &self.examples[k];
                        (e.input.clone(), e.target.clone())
                    })
                    .map_err(|_| {
                        RunError::permanent(format!(
                            "{PREPARED_ARTIFACT}: the split names row {i}, which is not a usable row"
                        ))
                    })
            })
            .collect()
    }
}

/// The planned job spec the coordinator passes as the job's config.
pub fn job_spec(ctx: &JobContext) -> Result<JobSpec, RunError> {
    serde_json::from_slice(ctx.config()).map_err(|e| {
        RunError::permanent(format!(
            "job {}: config is not a planned job spec: line {} column {}: {e}",
            ctx.job_id(),
            e.line(),
            e.column()
        ))
    })
}

/// The downloaded artifact `name` of parent job `job_id`.
pub fn parent_file(ctx: &JobContext, job_id: &str, name: &str) -> Result<PathBuf, RunError> {
    ctx.parents()
        .iter()
        .find(|p| p.job_id == job_id && p.name == name)
        .map(|p| p.path.clone())
        .ok_or_else(|| {
            RunError::permanent(format!(
                "job {}: parent job {job_id} has no artifact {name:?}",
                ctx.job_id()
            ))
        })
}

/// Reads the data-prep artifact of parent `prep_job`.
pub fn read_prepared(ctx: &JobContext, prep_job: &str) -> Result<PreparedArtifact, RunError> {
    let path = parent_file(ctx, prep_job, PREPARED_ARTIFACT)?;
    let bytes = std::fs::read(&path)
        .map_err(|e| RunError::retryable(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RunError::permanent(format!("{}: {e}", path.display())))
}

/// Copies the adapter files of parent train job `job_id` into `dir` (a PEFT adapter folder).
pub fn fetch_adapter(ctx: &JobContext, job_id: &str, dir: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    for name in ADAPTER_FILES {
        let from = parent_file(ctx, job_id, name)?;
        std::fs::copy(&from, dir.join(name)).map_err(|e| io_error(&from, e))?;
    }
    Ok(())
}

/// The worker-local path of the planned input `role` (`model`, `dataset`, `bertscore_model`).
pub fn input_path(spec: &JobSpec, role: &str) -> Result<PathBuf, RunError> {
    spec.inputs
        .get(role)
        .map(|r| r.path.clone())
        .ok_or_else(|| RunError::permanent(format!("job {}: no input {role:?} planned", spec.id)))
}

pub fn io_error(path: &Path, err: std::io::Error) -> RunError {
    RunError::retryable(format!("{}: {err}", path.display()))
}

/// Bad input and configs cannot get better on retry; everything else may.
pub fn engine_error(err: EngineError) -> RunError {
    match err {
        EngineError::Input(_) | EngineError::Config { .. } => RunError::permanent(err.to_string()),
        other => RunError::retryable(other.to_string()),
    }
}
