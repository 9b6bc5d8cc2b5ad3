//! The planner's job kinds (`data-prep`, `train`, `eval`, `report`, `select`, `summarize`) as worker runners,
//! and the helpers they share: decoding the planned job spec, finding parents' artifacts, bundling checkpoint
//! folders.

pub mod bundle;
pub mod data_prep;
pub mod eval;
pub mod report;
pub mod select;
pub mod summarize;
pub mod train;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tandem_experiments::manifest::hash::digest_path;
use tandem_experiments::planner::{JobSpec, PartIndices, input_role, wire};

use super::{JobContext, RunError, RunnerRegistry};
use crate::engine::EngineError;
use crate::engine::backend::{self, Backend, EngineModel};
use crate::engine::load::ModelOptions;

pub use tandem_experiments::planner::artifacts::{
    ADAPTER_FILES, EVAL_RESULT as EVAL_RESULT_ARTIFACT, PREPARED as PREPARED_ARTIFACT,
};

/// Registers the planner's kinds.
pub fn register_all(registry: &mut RunnerRegistry) {
    registry.register("data-prep", Arc::new(data_prep::DataPrepRunner));
    registry.register("train", Arc::new(train::TrainRunner));
    registry.register("eval", Arc::new(eval::EvalRunner));
    registry.register("report", Arc::new(report::ReportRunner));
    registry.register("select", Arc::new(select::SelectRunner));
    registry.register("summarize", Arc::new(summarize::SummarizeRunner));
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

/// Identifies a loaded base model: where it was read from, its digest, and how it was loaded.
type ModelKey = (PathBuf, String, String);

/// The base model the worker's last job used, kept (without adapters) for the next job that needs the same one:
/// loading SmolLM2 (GGUF decode, NF4 quantisation) costs seconds, a stage-2 eval matrix runs dozens of jobs.
static MODEL_CACHE: Mutex<Option<(ModelKey, EngineModel)>> = Mutex::new(None);

/// A job's base model; returned to the worker's cache, adapters removed, when the job drops it.
pub struct JobModel {
    key: ModelKey,
    loaded: Option<EngineModel>,
}

impl std::ops::Deref for JobModel {
    type Target = EngineModel;
    fn deref(&self) -> &EngineModel {
        self.loaded.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for JobModel {
    fn deref_mut(&mut self) -> &mut EngineModel {
        self.loaded.as_mut().expect("present until dropped")
    }
}

impl Drop for JobModel {
    fn drop(&mut self) {
        let Some(mut loaded) = self.loaded.take() else {
            return;
        };
        loaded.trainable().clear_adapter();
        if let Ok(mut cache) = MODEL_CACHE.lock() {
            *cache = Some((self.key.clone(), loaded));
        }
    }
}

/// The job's base model from its planned local path (quantised as the manifest says) on `backend`'s engine,
/// after checking that the worker's copy is the one the plan recorded; reused from the previous job when it
/// loaded the same model on the same backend.
pub fn load_job_model(
    ctx: &JobContext,
    spec: &JobSpec,
    model: &tandem_experiments::planner::ModelRef,
    backend: &Backend,
) -> Result<JobModel, RunError> {
    let path = input_path(ctx, input_role::MODEL)?;
    check_model_digest(&spec.id, &path, &model.sha256)?;
    let key = (
        path.clone(),
        model.sha256.clone(),
        format!(
            "{:?}/{:?}/{:?}/{backend}",
            model.family, model.quantization, model.compute_dtype
        ),
    );
    let cached = MODEL_CACHE.lock().ok().and_then(|mut cache| cache.take());
    if let Some((cached_key, loaded)) = cached
        && cached_key == key
    {
        tracing::debug!(job = %spec.id, "base model reused from the previous job");
        return Ok(JobModel {
            key,
            loaded: Some(loaded),
        });
    }
    let loaded = EngineModel::load(
        &path,
        ModelOptions {
            family: Some(model.family),
            quantization: model.quantization,
            compute_dtype: model.compute_dtype,
        },
        backend,
    )
    .map_err(engine_error)?;
    Ok(JobModel {
        key,
        loaded: Some(loaded),
    })
}

/// Checks that the worker's copy of the model at `path` is the one the plan was made with (the digest the
/// planner recorded). Digests are remembered per (path, size, modification time) for the worker's lifetime.
fn check_model_digest(job: &str, path: &Path, expected: &str) -> Result<(), RunError> {
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static SEEN: Mutex<BTreeMap<Key, String>> = Mutex::new(BTreeMap::new());
    let meta = std::fs::metadata(path).map_err(|e| {
        RunError::retryable(format!(
            "job {job}: the model is not on this worker at {}: {e}",
            path.display()
        ))
    })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let known = SEEN.lock().ok().and_then(|seen| seen.get(&key).cloned());
    let found = match known {
        Some(digest) => digest,
        None => {
            let digest = digest_path(path, true).map_err(|e| io_error(path, e))?;
            if let Ok(mut seen) = SEEN.lock() {
                seen.insert(key, digest.clone());
            }
            digest
        }
    };
    if found != expected {
        return Err(RunError::retryable(format!(
            "job {job}: the model at {} has digest {found}, the plan recorded {expected}: this worker's copy \
             differs from the one the experiment was submitted with",
            path.display()
        )));
    }
    Ok(())
}

/// Where a planned job computes: its manifest's `model.device`, its family and the GPUs this worker pinned it to
/// ([`backend::choose`]).
pub fn job_backend(
    ctx: &JobContext,
    model: &tandem_experiments::planner::ModelRef,
) -> Result<Backend, RunError> {
    let chosen =
        backend::choose(model.device, model.family, ctx.gpu_ordinals()).map_err(engine_error)?;
    tracing::info!(job = ctx.job_id(), backend = %chosen, "backend chosen");
    Ok(chosen)
}

/// The leased job as the planner made it: decoded here, once per job (`planner::wire`).
pub fn job_spec(ctx: &JobContext) -> Result<JobSpec, RunError> {
    wire::decode(ctx.job()).map_err(|e| RunError::permanent(e.to_string()))
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

/// Where input `role` (`model`, `dataset`, `bertscore_model`) was fetched to on this machine.
pub fn input_path(ctx: &JobContext, role: &str) -> Result<PathBuf, RunError> {
    ctx.input(role).map(Path::to_path_buf).ok_or_else(|| {
        RunError::permanent(format!(
            "job {}: no input {role:?} planned (inputs: {:?})",
            ctx.job_id(),
            ctx.inputs().keys().collect::<Vec<_>>()
        ))
    })
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
