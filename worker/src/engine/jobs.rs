//! One job from a manifest, end to end: the functions `tandem-worker train|generate` and the worker agent call.
//! They load the manifest's model and data, run the engine, and report through callbacks.

use std::path::{Path, PathBuf};

use tandem_experiments::data;
use tandem_experiments::manifest::{self, Manifest, Stage};
use tandem_experiments::planner;

use super::backend::{Backend, EngineModel};
use super::error::{EngineError, Result};
use super::generate::{self, GenerateConfig};
use super::load::ModelOptions;
use super::lora::LoraConfig;
use super::train::examples::{Overlong, build_examples};
use super::train::{self, TrainConfig, TrainEvent, TrainSummary};

/// Reads and validates a manifest (files checked).
pub fn load_manifest(path: &Path) -> Result<Manifest> {
    manifest::load(path, manifest::LoadOptions::default())
        .map_err(|e| EngineError::Input(e.to_string()))
}

/// Loads the manifest's base model (QLoRA-quantised when it says nf4) on `backend`'s engine.
pub fn load_base(manifest: &Manifest, backend: &Backend) -> Result<EngineModel> {
    EngineModel::load(
        &manifest.model.path,
        ModelOptions {
            family: Some(manifest.model.family),
            quantization: manifest.model.quantization,
            compute_dtype: manifest.model.compute_dtype,
        },
        backend,
    )
}

/// The rows (input, target) of one stage's train, val and test parts (`fold` for k-fold stages).
#[derive(Debug, Clone, Default)]
pub struct StageRows {
    pub train: Vec<(String, String)>,
    pub val: Vec<(String, String)>,
    pub test: Vec<(String, String)>,
}

/// Loads a stage's CSV and splits it as the planner does.
pub fn stage_rows(manifest: &Manifest, stage: Stage, fold: Option<usize>) -> Result<StageRows> {
    let spec = &manifest.stage(stage).dataset;
    let mut dataset = data::table::load_csv(&spec.path, &data::CsvOptions::from_spec(spec))
        .map_err(|e| EngineError::Input(format!("{} dataset: {e}", stage.as_str())))?;
    dataset.truncate(spec.max_rows);
    let prepared = planner::prepare(manifest, stage)
        .map_err(|e| EngineError::Input(e.to_string()))?
        .ok_or_else(|| {
            EngineError::Input(format!(
                "{} dataset is a MIMIC-CXR tree: run data preparation first",
                stage.as_str()
            ))
        })?;
    let part = match fold {
        None if prepared.parts.len() == 1 => &prepared.parts[0],
        None => {
            return Err(EngineError::Input(format!(
                "{} is split into {} folds: pass --fold 0..{}",
                stage.as_str(),
                prepared.parts.len(),
                prepared.parts.len() - 1
            )));
        }
        Some(k) => prepared
            .parts
            .iter()
            .find(|p| p.fold == Some(k))
            .ok_or_else(|| {
                EngineError::Input(format!(
                    "--fold {k}: {} has folds 0..{}",
                    stage.as_str(),
                    prepared.parts.len()
                ))
            })?,
    };
    // The split reports file row numbers (`Example::row`).
    let by_row: std::collections::HashMap<usize, &data::Example> =
        dataset.examples.iter().map(|e| (e.row, e)).collect();
    let pick = |idx: &[usize]| -> Result<Vec<(String, String)>> {
        idx.iter()
            .map(|i| {
                by_row
                    .get(i)
                    .map(|e| (e.input.clone(), e.target.clone()))
                    .ok_or_else(|| {
                        EngineError::Input(format!(
                            "{}: the split names row {i}, which is not a usable row",
                            spec.path.display()
                        ))
                    })
            })
            .collect()
    };
    Ok(StageRows {
        train: pick(&part.train)?,
        val: pick(&part.val)?,
        test: pick(&part.test)?,
    })
}

/// A training job.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub stage: Stage,
    pub fold: Option<usize>,
    pub out_dir: PathBuf,
    /// Adapter to start from (stage 2 starts from the stage-1 adapter).
    pub init_adapter: Option<PathBuf>,
    /// Continue from the newest checkpoint in `out_dir`.
    pub resume: bool,
    /// Where it computes ([`choose`](super::backend::choose)).
    pub backend: Backend,
}

/// Trains one stage (one fold) of `manifest`.
pub fn run_train(
    manifest: &Manifest,
    job: &TrainJob,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let stage = manifest.stage(job.stage);
    let rows = stage_rows(manifest, job.stage, job.fold)?;
    let mut loaded = load_base(manifest, &job.backend)?;
    let lora = LoraConfig::from(&manifest.lora);
    if let Some(dir) = &job.init_adapter {
        loaded.trainable().load_adapter(dir, Some(lora.r))?;
    } else {
        loaded.trainable().add_adapter(&lora, manifest.seed)?;
    }
    tracing::info!(
        stage = job.stage.as_str(),
        fold = job.fold,
        train_rows = rows.train.len(),
        val_rows = rows.val.len(),
        init_adapter = job.init_adapter.is_some(),
        "training job"
    );
    let max_len = stage.training.max_length;
    let train_ex = build_examples(
        &loaded,
        &rows.train,
        &stage.prompt.train,
        max_len,
        Overlong::Error,
    )?;
    let val_ex = build_examples(
        &loaded,
        &rows.val,
        &stage.prompt.train,
        max_len,
        Overlong::Error,
    )?;
    let config = TrainConfig {
        training: stage.training.clone(),
        lora,
        seed: manifest.seed,
        resume: job.resume,
    };
    train::run(
        &mut *loaded.trainable(),
        &train_ex,
        &val_ex,
        &config,
        &job.out_dir,
        on_event,
        &|| train::Control::Continue,
    )
}

/// Lower-cases and collapses whitespace (the thesis's pre-processing before inference).
pub fn preprocess(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Generates for `inputs` with `stage`'s inference prompt and decoding settings, with `adapter` applied, on
/// `backend` ([`choose`](super::backend::choose)).
pub fn run_generate(
    manifest: &Manifest,
    stage: Stage,
    adapter: Option<&Path>,
    inputs: &[String],
    config: Option<GenerateConfig>,
    backend: &Backend,
    on_batch: &mut dyn FnMut(usize),
) -> Result<Vec<String>> {
    let spec = manifest.stage(stage);
    let mut loaded = load_base(manifest, backend)?;
    if let Some(dir) = adapter {
        loaded
            .trainable()
            .load_adapter(dir, Some(manifest.lora.r))?;
    }
    let cfg = config.unwrap_or_else(|| GenerateConfig::from_spec(&spec.generation, manifest.seed));
    tracing::info!(
        stage = stage.as_str(),
        rows = inputs.len(),
        beams = cfg.num_beams,
        "generation job"
    );
    let inputs: Vec<String> = if manifest.evaluation.preprocess {
        inputs.iter().map(|s| preprocess(s)).collect()
    } else {
        inputs.to_vec()
    };
    generate::generate_texts(
        &loaded,
        &inputs,
        &spec.prompt.inference,
        &cfg,
        spec.training.batch_size,
        on_batch,
    )
}
