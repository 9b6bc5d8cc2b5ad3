//! The planner: expands a resolved manifest into the job graph of an experiment (ARCHITECTURE.md): data preparation
//! per stage, base evaluations, stage-1 training, per-fold stage-2 training from the stage-1 adapter, every
//! model-stage x task evaluation cell of Tables 4.1 and 4.3 (with the forgetting check: the two-stage model of
//! fold k on the stage-1 test set), one evaluation per sweep point, and a final report.
//!
//! Job ids are content hashes (see [`job::identity`]): a job's config holds the digests of its input files, its
//! split indices and its parents' ids, so changing a stage-2 setting changes stage-2 jobs and what follows
//! them but leaves the stage-1 jobs (and their completed work) alone.

pub mod artifacts;
pub mod inputs;
pub mod job;
pub mod prep;
mod render;
pub mod summarize;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use job::*;
pub use render::render_tree;
use serde::Serialize;

use crate::data::{self, split};
use crate::manifest::hash::{self, HashError, sha256_hex};
use crate::manifest::{
    DatasetFormat, EvalCell, GenerationSpec, Manifest, ModelStage, Selection, SplitSpec, Stage,
    SweepSpec, TrainPoint, TrainingSweep,
};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Hash(#[from] HashError),
    #[error("{stage} dataset: {source}")]
    Data {
        stage: &'static str,
        source: data::DataError,
    },
    #[error("{stage} dataset {}: {source}", path.display())]
    Io {
        stage: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{stage} dataset {}: its digest is {found}, the job expects {expected}", path.display())]
    DigestMismatch {
        stage: &'static str,
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "{stage} dataset: the prepared rows differ from the planned ones (same data, same seed must give the same split)"
    )]
    RowsMismatch { stage: &'static str },
    #[error("{stage} dataset {}: {source}", path.display())]
    Split {
        stage: &'static str,
        path: PathBuf,
        source: split::SplitError,
    },
}

/// An experiment's job graph, in dependency order (every job after its deps).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub experiment: String,
    /// The manifest's content hash (`tandem manifest hash`).
    pub manifest_sha256: String,
    pub jobs: Vec<JobSpec>,
    /// The experiment's inputs by manifest field (`model.path`, `stage1.dataset.path`, ...), and the blobs
    /// behind them (files and folder listings) for the submitting client to upload; both empty for a plan
    /// expanded from already-known inputs.
    pub inputs: BTreeMap<String, InputRef>,
    #[serde(skip)]
    pub blobs: Vec<inputs::InputBlob>,
    /// The jobs whose adapters are the stage models: what `tandem summarize` builds on.
    #[serde(skip)]
    pub stage_models: StageModels,
}

/// The adapter jobs of an experiment's fine-tuned models (a train job, or a sweep's select job).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageModels {
    pub stage1: Option<String>,
    /// The two-stage model per stage-2 fold (`None` = a holdout stage 2).
    pub stage2: BTreeMap<Option<usize>, String>,
}

impl Plan {
    pub fn job(&self, id: &str) -> Option<&JobSpec> {
        self.jobs.iter().find(|j| j.id == id)
    }

    pub fn count(&self, kind: JobKind) -> usize {
        self.jobs.iter().filter(|j| j.kind == kind).count()
    }
}

/// What the planner learns from the file system: digests and, for CSV datasets, the prepared rows.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInputs {
    pub manifest_sha256: String,
    pub model: InputRef,
    pub datasets: [InputRef; 2],
    pub bertscore_model: Option<InputRef>,
    /// Per stage; `None` for a MIMIC-CXR tree (prepared by the worker).
    pub prepared: [Option<PreparedRows>; 2],
}

/// Hashes the manifest's files, prepares CSV datasets and expands the graph.
pub fn plan(manifest: &Manifest) -> Result<Plan, PlanError> {
    let content = hash::content_hash(manifest)?;
    let input = |role: &str, path: &PathBuf| {
        let files = content.files.iter().filter(|f| f.role == role);
        let folder = content.folders.contains(role);
        InputRef {
            path: path.clone(),
            sha256: content.inputs[role].clone(),
            folder,
            file_name: match folder {
                true => String::new(),
                false => path
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            },
            size: files.map(|f| f.bytes).sum(),
        }
    };
    let mut prepared = [None, None];
    for (slot, stage) in Stage::ALL.into_iter().enumerate() {
        prepared[slot] = prepare(manifest, stage)?;
    }
    let inputs = PlanInputs {
        manifest_sha256: content.sha256.clone(),
        model: input("model.path", &manifest.model.path),
        datasets: [
            input("stage1.dataset.path", &manifest.stage1.dataset.path),
            input("stage2.dataset.path", &manifest.stage2.dataset.path),
        ],
        bertscore_model: manifest
            .evaluation
            .bertscore_model
            .as_ref()
            .map(|p| input("evaluation.bertscore_model", p)),
        prepared,
    };
    let mut plan = expand(manifest, &inputs);
    plan.inputs = BTreeMap::from([
        ("model.path".to_owned(), inputs.model.clone()),
        ("stage1.dataset.path".to_owned(), inputs.datasets[0].clone()),
        ("stage2.dataset.path".to_owned(), inputs.datasets[1].clone()),
    ]);
    if let Some(encoder) = &inputs.bertscore_model {
        plan.inputs
            .insert("evaluation.bertscore_model".into(), encoder.clone());
    }
    plan.blobs = inputs::blobs(&content);
    Ok(plan)
}

/// Loads a CSV stage dataset and computes its split or folds (`None` for a MIMIC-CXR tree).
pub fn prepare(manifest: &Manifest, stage: Stage) -> Result<Option<PreparedRows>, PlanError> {
    let spec = &manifest.stage(stage).dataset;
    if spec.format == DatasetFormat::Mimic {
        return Ok(None);
    }
    let options = data::CsvOptions::from_spec(spec);
    let split = &manifest.stage(stage).split;
    prepare_csv(
        &spec.path,
        &options,
        spec.max_rows,
        split,
        manifest.seed,
        stage,
    )
    .map(Some)
}

/// Loads a CSV, drops bad rows as configured, keeps the first `max_rows`, and splits it (the work of a
/// data-prep job, shared by the planner and the worker so both get the same indices).
pub fn prepare_csv(
    path: &std::path::Path,
    options: &data::CsvOptions,
    max_rows: Option<usize>,
    split_spec: &SplitSpec,
    seed: u64,
    stage: Stage,
) -> Result<PreparedRows, PlanError> {
    let name = stage.as_str();
    let mut dataset = data::table::load_csv(path, options).map_err(|source| PlanError::Data {
        stage: name,
        source,
    })?;
    dataset.truncate(max_rows);
    let items = split::items(&dataset.examples);
    let split_error = |source| PlanError::Split {
        stage: name,
        path: path.to_path_buf(),
        source,
    };
    let parts = match *split_spec {
        SplitSpec::Holdout { train, val, test } => {
            let s = split::holdout(&items, (train, val, test), seed).map_err(split_error)?;
            vec![PartIndices {
                fold: None,
                train: s.train,
                val: s.val,
                test: s.test,
            }]
        }
        SplitSpec::Kfold {
            folds,
            val_fraction,
        } => split::kfold(&items, folds, val_fraction, seed)
            .map_err(split_error)?
            .into_iter()
            .map(|f| PartIndices {
                fold: Some(f.fold),
                train: f.train,
                val: f.val,
                test: f.test,
            })
            .collect(),
    };
    Ok(PreparedRows {
        total_rows: dataset.total_rows,
        usable_rows: dataset.examples.len(),
        dropped: dataset.dropped.into(),
        parts,
    })
}

struct Builder<'a> {
    manifest: &'a Manifest,
    inputs: &'a PlanInputs,
    jobs: Vec<JobSpec>,
}

#[derive(Default)]
struct Labels {
    stage: Option<Stage>,
    fold: Option<usize>,
    model_stage: Option<ModelStage>,
    task: Option<Stage>,
    sweep: Option<SweepPoint>,
}

impl Builder<'_> {
    fn push(
        &mut self,
        label: String,
        deps: Vec<String>,
        config: JobConfig,
        labels: Labels,
        inputs: BTreeMap<String, InputRef>,
    ) -> String {
        let (config_hash, id) = identity(&config);
        if let Some(existing) = self.jobs.iter_mut().find(|j| j.id == id) {
            // The same work reached twice (a sweep value equal to the configured one): one job.
            if let (None, Some(point)) = (existing.sweep, labels.sweep) {
                existing.sweep = Some(point);
                existing.label = format!(
                    "{}, {}={} (configured)",
                    existing.label.trim_end_matches(')'),
                    point.parameter.as_str(),
                    point.value
                ) + ")";
            }
            return id;
        }
        let resources = match config.kind() {
            JobKind::DataPrep => &self.manifest.resources.data_prep,
            JobKind::Train => &self.manifest.resources.train,
            JobKind::Eval | JobKind::Summarize => &self.manifest.resources.eval,
            JobKind::Report | JobKind::Select => &self.manifest.resources.report,
        }
        .clone();
        self.jobs.push(JobSpec {
            id: id.clone(),
            kind: config.kind(),
            label,
            deps,
            config_hash,
            resources,
            stage: labels.stage,
            fold: labels.fold,
            model_stage: labels.model_stage,
            task: labels.task,
            sweep: labels.sweep,
            configured: labels.sweep.is_none(),
            inputs,
            config,
        });
        id
    }

    fn model_ref(&self) -> ModelRef {
        let m = &self.manifest.model;
        ModelRef {
            family: m.family,
            sha256: self.inputs.model.sha256.clone(),
            quantization: m.quantization,
            compute_dtype: m.compute_dtype,
            device: m.device,
        }
    }

    fn model_inputs(&self) -> BTreeMap<String, InputRef> {
        let mut inputs =
            BTreeMap::from([(input_role::MODEL.to_owned(), self.inputs.model.clone())]);
        if let Some(encoder) = &self.inputs.bertscore_model {
            inputs.insert(input_role::BERTSCORE_MODEL.into(), encoder.clone());
        }
        inputs
    }

    fn slice(&self, stage: Stage, prep_job: &str, fold: Option<usize>, part: &str) -> DataSlice {
        let prepared = self.inputs.prepared[stage_slot(stage)].as_ref();
        let indices_sha256 = prepared
            .and_then(|p| p.parts.iter().find(|x| x.fold == fold))
            .map(|x| {
                let list = match part {
                    "train" => &x.train,
                    "val" => &x.val,
                    _ => &x.test,
                };
                sha256_hex(
                    serde_json::to_string(list)
                        .expect("indices serialise")
                        .as_bytes(),
                )
            });
        DataSlice {
            prep_job: prep_job.to_owned(),
            fold,
            part: part.to_owned(),
            indices_sha256,
        }
    }

    fn data_prep(&mut self, stage: Stage) -> String {
        let spec = self.manifest.stage(stage);
        let d = &spec.dataset;
        let input = self.inputs.datasets[stage_slot(stage)].clone();
        let config = JobConfig::DataPrep(DataPrepConfig {
            stage,
            dataset: DatasetRef {
                sha256: input.sha256.clone(),
                format: d.format,
                input_column: d.input_column.clone(),
                target_column: d.target_column.clone(),
                group_column: d.group_column.clone(),
                bad_rows: d.bad_rows,
                max_rows: d.max_rows,
            },
            seed: self.manifest.seed,
            split: spec.split.clone(),
            stratify: STRATIFY_KEY.to_owned(),
            rows: self.inputs.prepared[stage_slot(stage)].clone(),
        });
        let folds = match spec.split {
            SplitSpec::Kfold { folds, .. } => format!(", {folds} folds"),
            SplitSpec::Holdout { .. } => String::new(),
        };
        let labels = Labels {
            stage: Some(stage),
            ..Labels::default()
        };
        self.push(
            format!("data-prep({}{folds})", stage.as_str()),
            vec![],
            config,
            labels,
            BTreeMap::from([(input_role::DATASET.to_owned(), input)]),
        )
    }

    fn train(
        &mut self,
        stage: Stage,
        fold: Option<usize>,
        prep: &str,
        init: Option<&str>,
    ) -> String {
        self.train_variant(stage, fold, prep, init, None)
    }

    /// A train job with the manifest's settings, or (`point`) with a sweep point's values and its ASHA rule.
    fn train_variant(
        &mut self,
        stage: Stage,
        fold: Option<usize>,
        prep: &str,
        init: Option<&str>,
        point: Option<(usize, &TrainPoint, Option<AshaRule>)>,
    ) -> String {
        let spec = self.manifest.stage(stage);
        let (lora, training) = match point {
            Some((_, values, _)) => values.apply(&self.manifest.lora, &spec.training),
            None => (self.manifest.lora.clone(), spec.training.clone()),
        };
        let config = JobConfig::Train(TrainConfig {
            stage,
            fold,
            seed: self.manifest.seed,
            model: self.model_ref(),
            lora,
            prompt: spec.prompt.clone(),
            training,
            data: self.slice(stage, prep, fold, "train"),
            init_adapter: init.map(str::to_owned),
            asha: point.as_ref().and_then(|(_, _, asha)| asha.clone()),
        });
        let mut deps = vec![prep.to_owned()];
        deps.extend(init.map(str::to_owned));
        let fold_text = fold.map_or_else(String::new, |k| format!(", fold {k}"));
        let label = match point {
            Some((index, values, _)) => format!(
                "train({}{fold_text}, point {index}: {})",
                stage.as_str(),
                values.describe()
            ),
            None => format!("train({}{fold_text})", stage.as_str()),
        };
        let labels = Labels {
            stage: Some(stage),
            fold,
            ..Labels::default()
        };
        let mut inputs = self.model_inputs();
        inputs.remove(input_role::BERTSCORE_MODEL);
        self.push(label, deps, config, labels, inputs)
    }

    /// The stage's training sweep, when the manifest has one for `stage`: a train job per point (from `init`),
    /// an evaluation on the validation rows per point when a score selects, and the select job. Returns the
    /// adapter job the stage's tables and next stage use: the select job when the sweep feeds, else `None`
    /// (the caller trains the manifest's own settings).
    fn training_sweep(
        &mut self,
        stage: Stage,
        fold: Option<usize>,
        prep: &str,
        init: Option<&str>,
    ) -> Option<String> {
        let sweep = self
            .manifest
            .training_sweep
            .as_ref()
            .filter(|s| s.stage == stage)?;
        let asha = sweep.asha.map(|a| AshaRule {
            group: self.asha_group(sweep, fold, prep),
            grace_period: a.grace_period,
            reduction_factor: a.reduction_factor,
        });
        let mut candidates = Vec::new();
        let mut deps = Vec::new();
        for (index, point) in sweep.points.iter().enumerate() {
            let train =
                self.train_variant(stage, fold, prep, init, Some((index, point, asha.clone())));
            deps.push(train.clone());
            let val_eval_job = match &sweep.select {
                Selection::ValLoss => None,
                Selection::Score(_) => {
                    let id = self.val_eval(stage, fold, prep, &train, index);
                    deps.push(id.clone());
                    Some(id)
                }
            };
            candidates.push(Candidate {
                point: index,
                values: point.clone(),
                train_job: train,
                val_eval_job,
            });
        }
        let config = JobConfig::Select(SelectConfig {
            stage,
            fold,
            select: sweep.select.clone(),
            candidates,
        });
        let fold_text = fold.map_or_else(String::new, |k| format!(", fold {k}"));
        let labels = Labels {
            stage: Some(stage),
            fold,
            ..Labels::default()
        };
        let id = self.push(
            format!(
                "select({}{fold_text}, best of {} by {})",
                stage.as_str(),
                sweep.points.len(),
                sweep.select.name()
            ),
            deps,
            config,
            labels,
            BTreeMap::new(),
        );
        sweep.feed.then_some(id)
    }

    /// What identifies the points that compete at ASHA rungs: the sweep, its stage and fold, data and model.
    fn asha_group(&self, sweep: &TrainingSweep, fold: Option<usize>, prep: &str) -> String {
        // Only what changes how points train and compete (not `select`, `feed` or `max_points`).
        let identity = serde_json::json!({
            "stage": sweep.stage,
            "points": sweep.points,
            "asha": sweep.asha,
            "fold": fold,
            "prep": prep,
            "model": self.inputs.model.sha256,
            "seed": self.manifest.seed,
        });
        sha256_hex(hash::canonical_json(&identity).as_bytes())
    }

    /// An evaluation of `model_stage` (with `adapter`) on `task`'s rows `data`, scored as the manifest says.
    fn eval_config(
        &self,
        model_stage: ModelStage,
        task: Stage,
        fold: Option<usize>,
        adapter: Option<&str>,
        generation: GenerationSpec,
        data: DataSlice,
    ) -> EvalConfig {
        let evaluation = &self.manifest.evaluation;
        EvalConfig {
            model_stage,
            task,
            fold,
            seed: self.manifest.seed,
            model: self.model_ref(),
            adapter: adapter.map(str::to_owned),
            prompt: self.manifest.stage(task).prompt.inference.clone(),
            generation,
            data,
            metrics: evaluation.metrics.clone(),
            preprocess: evaluation.preprocess,
            bertscore_model: self
                .inputs
                .bertscore_model
                .as_ref()
                .map(|b| b.sha256.clone()),
            bertscore_layer: evaluation.bertscore_layer,
            radgraph_command: evaluation.radgraph_command.clone(),
        }
    }

    /// A sweep point's adapter evaluated on the stage's validation rows with the configured generation.
    fn val_eval(
        &mut self,
        stage: Stage,
        fold: Option<usize>,
        prep: &str,
        train: &str,
        index: usize,
    ) -> String {
        let spec = self.manifest.stage(stage);
        let model_stage = match stage {
            Stage::Stage1 => ModelStage::Stage1,
            Stage::Stage2 => ModelStage::TwoStage,
        };
        let config = JobConfig::Eval(self.eval_config(
            model_stage,
            stage,
            fold,
            Some(train),
            spec.generation.clone(),
            self.slice(stage, prep, fold, "val"),
        ));
        let fold_text = fold.map_or_else(String::new, |k| format!(" fold {k}"));
        let labels = Labels {
            fold,
            model_stage: Some(model_stage),
            task: Some(stage),
            ..Labels::default()
        };
        let inputs = self.model_inputs();
        self.push(
            format!("eval(point {index}, {}{fold_text} val)", stage.as_str()),
            vec![prep.to_owned(), train.to_owned()],
            config,
            labels,
            inputs,
        )
    }

    /// One evaluation per generation setting: the configured one and each sweep point of this task (sweeps
    /// apply to the model fine-tuned on that task's stage: stage1 -> stage-1 model, stage2 -> two-stage model).
    #[allow(clippy::too_many_arguments)]
    fn evals(
        &mut self,
        model_stage: ModelStage,
        task: Stage,
        fold: Option<usize>,
        prep: &str,
        adapter: Option<&str>,
        evals: &mut Vec<String>,
    ) {
        if !self.manifest.evaluation.cells.contains(&EvalCell {
            model: model_stage,
            task,
        }) {
            return;
        }
        let spec = self.manifest.stage(task);
        let data_fold = match spec.split {
            SplitSpec::Kfold { .. } => fold,
            SplitSpec::Holdout { .. } => None,
        };
        let mut settings = vec![(spec.generation.clone(), None)];
        let tuned = match task {
            Stage::Stage1 => ModelStage::Stage1,
            Stage::Stage2 => ModelStage::TwoStage,
        };
        if model_stage == tuned {
            for sweep in self
                .manifest
                .sweeps
                .iter()
                .filter(|s: &&SweepSpec| s.stage == task)
            {
                for &value in &sweep.values {
                    let point = SweepPoint {
                        stage: task,
                        parameter: sweep.parameter,
                        value,
                    };
                    settings.push((spec.generation.with(sweep.parameter, value), Some(point)));
                }
            }
        }
        // With sweeps, the configured setting is the sweep point equal to it (or its own job when none is).
        for (generation, sweep) in settings {
            // A two-stage model (trained on one stage-2 fold) evaluated on a holdout task reads its one part.
            let data = self.slice(task, prep, data_fold, "test");
            let config = JobConfig::Eval(self.eval_config(
                model_stage,
                task,
                fold,
                adapter,
                generation,
                data,
            ));
            let model = match (model_stage, fold) {
                (ModelStage::TwoStage, Some(k)) => format!("two-stage fold {k}"),
                (m, _) => m.as_str().to_owned(),
            };
            let data = match (task, fold) {
                (Stage::Stage2, Some(k)) => format!("stage2 fold {k} test"),
                (t, _) => format!("{} test", t.as_str()),
            };
            let point = sweep.map_or_else(String::new, |p: SweepPoint| {
                format!(", {}={}", p.parameter.as_str(), p.value)
            });
            let mut deps = vec![prep.to_owned()];
            deps.extend(adapter.map(str::to_owned));
            let labels = Labels {
                stage: None,
                fold,
                model_stage: Some(model_stage),
                task: Some(task),
                sweep,
            };
            let inputs = self.model_inputs();
            let id = self.push(
                format!("eval({model}, {data}{point})"),
                deps,
                config,
                labels,
                inputs,
            );
            if !evals.contains(&id) {
                evals.push(id);
            }
        }
    }
}

fn stage_slot(stage: Stage) -> usize {
    match stage {
        Stage::Stage1 => 0,
        Stage::Stage2 => 1,
    }
}

/// Expands the graph from already-known inputs (pure; what `plan` calls after touching the file system).
pub fn expand(manifest: &Manifest, inputs: &PlanInputs) -> Plan {
    let mut b = Builder {
        manifest,
        inputs,
        jobs: Vec::new(),
    };
    let mut evals = Vec::new();
    let mut stage_models = StageModels::default();
    // Only the work some table cell needs is planned: a manifest without two-stage cells trains no folds.
    let cells = &manifest.evaluation.cells;
    let wants = |f: &dyn Fn(&EvalCell) -> bool| cells.iter().any(f);
    let two_stage = wants(&|c| c.model == ModelStage::TwoStage);
    let stage1_model = two_stage || wants(&|c| c.model == ModelStage::Stage1);
    let stage1_data = stage1_model || wants(&|c| c.task == Stage::Stage1);
    let stage2_data = two_stage || wants(&|c| c.task == Stage::Stage2);

    let prep1 = stage1_data.then(|| b.data_prep(Stage::Stage1));
    if let Some(prep1) = &prep1 {
        b.evals(
            ModelStage::Base,
            Stage::Stage1,
            None,
            prep1,
            None,
            &mut evals,
        );
    }
    let train1 = match &prep1 {
        Some(prep1) if stage1_model => {
            let train1 = match b.training_sweep(Stage::Stage1, None, prep1, None) {
                Some(selected) => selected,
                None => b.train(Stage::Stage1, None, prep1, None),
            };
            b.evals(
                ModelStage::Stage1,
                Stage::Stage1,
                None,
                prep1,
                Some(&train1),
                &mut evals,
            );
            Some(train1)
        }
        _ => None,
    };
    stage_models.stage1 = train1.clone();
    if stage2_data {
        let prep2 = b.data_prep(Stage::Stage2);
        let folds: Vec<Option<usize>> = match manifest.stage2.split {
            SplitSpec::Kfold { folds, .. } => (0..folds).map(Some).collect(),
            SplitSpec::Holdout { .. } => vec![None],
        };
        for &fold in &folds {
            b.evals(
                ModelStage::Base,
                Stage::Stage2,
                fold,
                &prep2,
                None,
                &mut evals,
            );
            if let Some(train1) = &train1 {
                b.evals(
                    ModelStage::Stage1,
                    Stage::Stage2,
                    fold,
                    &prep2,
                    Some(train1),
                    &mut evals,
                );
            }
        }
        if let (true, Some(train1)) = (two_stage, &train1) {
            for &fold in &folds {
                let train2 = match b.training_sweep(Stage::Stage2, fold, &prep2, Some(train1)) {
                    Some(selected) => selected,
                    None => b.train(Stage::Stage2, fold, &prep2, Some(train1)),
                };
                stage_models.stage2.insert(fold, train2.clone());
                // The forgetting check (the two-stage model of this fold on the stage-1 test set) first: it
                // decodes the longer stage-1 outputs, and the scheduler breaks ties in plan order, so the
                // longest evaluation of a fold starts first and the last worker is not left with it alone.
                if let Some(prep1) = &prep1 {
                    b.evals(
                        ModelStage::TwoStage,
                        Stage::Stage1,
                        fold,
                        prep1,
                        Some(&train2),
                        &mut evals,
                    );
                }
                b.evals(
                    ModelStage::TwoStage,
                    Stage::Stage2,
                    fold,
                    &prep2,
                    Some(&train2),
                    &mut evals,
                );
            }
        }
    }
    let report = JobConfig::Report(ReportConfig {
        experiment: manifest.name.clone(),
        evals: evals.clone(),
        metrics: manifest.evaluation.metrics.clone(),
        cells: manifest.evaluation.cells.clone(),
    });
    b.push(
        "report".into(),
        evals,
        report,
        Labels::default(),
        BTreeMap::new(),
    );
    tracing::info!(experiment = %manifest.name, jobs = b.jobs.len(), "planned");
    Plan {
        experiment: manifest.name.clone(),
        manifest_sha256: inputs.manifest_sha256.clone(),
        jobs: b.jobs,
        inputs: BTreeMap::new(),
        blobs: Vec::new(),
        stage_models,
    }
}
