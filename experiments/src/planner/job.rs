//! What one job of the graph is: its kind, identity, dependencies, resources and the self-contained config a
//! worker runs it from (no manifest needed).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::DropCounts;
use crate::manifest::hash::sha256_hex;
use crate::manifest::{AshaSpec, Selection, TrainPoint};
use crate::manifest::{
    BadRows, ComputeDtype, DatasetFormat, DevicePreference, EvalCell, GenerationSpec, LoraSpec,
    Metric, ModelFamily, ModelStage, PromptSpec, Quantization, ResourceRequest, SplitSpec, Stage,
    SweepParameter, TrainingSpec,
};

/// The code version that job ids include. Bump it only when the engine's results for the same config change
/// (training loop, generation, data preparation, metrics); commits that leave those alone keep every job id,
/// so completed work is reused.
// 2: LoRA dropout masks from tandem_kernels::dropout (the GPU's generator) and AdamW from tandem_kernels (fp32).
// 3: the CPU training step's fused ops (RMSNorm, RoPE, SwiGLU, masked softmax, cross-entropy, the LoRA layer,
//    attention): same seed and inputs give the same bits, but not revision 2's bits.
pub const ENGINE_REVISION: &str = "tandem-engine-3";

/// How the planner stratifies holdout splits (see `data::split`); part of every data-prep config.
pub const STRATIFY_KEY: &str = "target-length-words-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    DataPrep,
    Train,
    Eval,
    Report,
    /// Picks the best point of a training sweep and hands its adapter on.
    Select,
    /// Summarises one patient's history through the stage-1 and stage-2 adapters (`tandem summarize`).
    Summarize,
}

impl JobKind {
    pub const ALL: [JobKind; 6] = [
        JobKind::DataPrep,
        JobKind::Train,
        JobKind::Eval,
        JobKind::Report,
        JobKind::Select,
        JobKind::Summarize,
    ];

    /// The kind named `text` (`data-prep`, `train`, `eval`, `report`).
    pub fn parse(text: &str) -> Option<JobKind> {
        JobKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::DataPrep => "data-prep",
            JobKind::Train => "train",
            JobKind::Eval => "eval",
            JobKind::Report => "report",
            JobKind::Select => "select",
            JobKind::Summarize => "summarize",
        }
    }
}

/// One value of a sweep, applied to an evaluation's generation settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub stage: Stage,
    pub parameter: SweepParameter,
    pub value: f64,
}

/// A file or folder a job reads, by content (its digest is part of the job's identity, through the config).
/// Workers fetch it by digest from the coordinator's blob store (see [`super::inputs`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// Where it is on the planning machine: what the submitting client uploads. Never serialised, so never
    /// sent: a worker does not see the submitter's paths.
    #[serde(skip)]
    pub path: PathBuf,
    /// `sha256:<hex>` as in the manifest's canonical form.
    pub sha256: String,
    /// The digest names a folder listing rather than a file.
    #[serde(default)]
    pub folder: bool,
    /// A file's name (its extension tells `.gguf` from `.csv` or `.zip`); empty for a folder.
    #[serde(default)]
    pub file_name: String,
    /// Bytes of the file, or of every listed file.
    #[serde(default)]
    pub size: u64,
}

impl InputRef {
    /// The digest as hex, without the `sha256:` prefix.
    pub fn sha256_hex(&self) -> &str {
        self.sha256.strip_prefix("sha256:").unwrap_or(&self.sha256)
    }
}

/// The role names of a planner job's inputs.
pub mod input_role {
    pub const MODEL: &str = "model";
    pub const DATASET: &str = "dataset";
    pub const BERTSCORE_MODEL: &str = "bertscore_model";
    /// The patient-history CSV of a summarize job.
    pub const HISTORIES: &str = "histories";
}

/// One job of an experiment's graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Content hash: SHA-256 over kind, config (which holds the input digests and parent job ids) and
    /// [`ENGINE_REVISION`].
    pub id: String,
    pub kind: JobKind,
    /// Human-readable name, e.g. `train(stage2, fold 3)`.
    pub label: String,
    /// Ids of the jobs that must succeed first.
    pub deps: Vec<String>,
    /// SHA-256 of the canonical JSON of `config`.
    pub config_hash: String,
    pub resources: ResourceRequest,
    pub stage: Option<Stage>,
    pub fold: Option<usize>,
    pub model_stage: Option<ModelStage>,
    pub task: Option<Stage>,
    pub sweep: Option<SweepPoint>,
    /// Whether an evaluation ran the manifest's configured generation settings (no sweep point, or the sweep
    /// point equal to them): a cell of the main tables.
    #[serde(default = "configured_default")]
    pub configured: bool,
    /// Where the referenced files are (role -> path and digest): `model`, `dataset`, `bertscore_model`.
    pub inputs: BTreeMap<String, InputRef>,
    pub config: JobConfig,
}

fn configured_default() -> bool {
    true
}

/// Everything a worker needs to run the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobConfig {
    DataPrep(DataPrepConfig),
    Train(TrainConfig),
    Eval(EvalConfig),
    Report(ReportConfig),
    Select(SelectConfig),
    Summarize(SummarizeConfig),
}

/// The base model, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub family: ModelFamily,
    /// Digest of the weights (a GGUF file, or the listing of a Hugging Face folder's files).
    pub sha256: String,
    pub quantization: Quantization,
    pub compute_dtype: ComputeDtype,
    /// The manifest's `model.device`: where the worker computes. Left out of the config when `auto`, so the
    /// bytes (and ids) of jobs planned before the field existed are unchanged.
    #[serde(default, skip_serializing_if = "DevicePreference::is_auto")]
    pub device: DevicePreference,
}

/// A stage's dataset, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    pub sha256: String,
    pub format: DatasetFormat,
    pub input_column: String,
    pub target_column: String,
    pub group_column: Option<String>,
    pub bad_rows: BadRows,
    pub max_rows: Option<usize>,
}

/// The row indices of one split or fold (0-based data rows of the (converted) CSV, ascending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartIndices {
    pub fold: Option<usize>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
}

/// What the planner computed from a CSV dataset: usable rows and the split or folds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedRows {
    pub total_rows: usize,
    pub usable_rows: usize,
    pub dropped: DroppedRows,
    pub parts: Vec<PartIndices>,
}

/// Rows dropped as bad (see `data::table`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedRows {
    pub wrong_field_count: usize,
    pub empty_input: usize,
    pub empty_target: usize,
    pub empty_group: usize,
}

impl From<DropCounts> for DroppedRows {
    fn from(d: DropCounts) -> Self {
        DroppedRows {
            wrong_field_count: d.wrong_field_count,
            empty_input: d.empty_input,
            empty_target: d.empty_target,
            empty_group: d.empty_group,
        }
    }
}

/// Load a stage's data, drop bad rows, cap rows, split. For a CSV the planner has already done it and `rows`
/// holds the result for the worker to verify; for a MIMIC-CXR tree the worker converts it first and derives
/// the split with the same functions, seed and key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataPrepConfig {
    pub stage: Stage,
    pub dataset: DatasetRef,
    pub seed: u64,
    pub split: SplitSpec,
    pub stratify: String,
    pub rows: Option<PreparedRows>,
}

/// Which rows of a data-prep job's output a job uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSlice {
    /// The data-prep job whose artifact (prepared CSV + splits) is read.
    pub prep_job: String,
    pub fold: Option<usize>,
    /// `train` (with `val` for validation) for training, `test` for evaluation.
    pub part: String,
    /// SHA-256 of the part's index list (JSON array), when the planner knows it.
    pub indices_sha256: Option<String>,
}

/// Fine-tune LoRA adapters on one stage (one fold for stage 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub stage: Stage,
    pub fold: Option<usize>,
    pub seed: u64,
    pub model: ModelRef,
    pub lora: LoraSpec,
    pub prompt: PromptSpec,
    pub training: TrainingSpec,
    pub data: DataSlice,
    /// The train job whose adapter initialises this one (stage 2 starts from stage 1).
    pub init_adapter: Option<String>,
    /// The ASHA rule of the training sweep this job is a point of; left out of the config when absent (so
    /// the ids of jobs planned before sweeps existed are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asha: Option<AshaRule>,
}

/// How a sweep point's train job reports at ASHA rungs: the coordinator compares its validation loss with the
/// other points of `group` that reached the same rung.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AshaRule {
    /// The points that compete: SHA-256 over the sweep, its stage and fold, data and model.
    pub group: String,
    pub grace_period: usize,
    pub reduction_factor: usize,
}

impl AshaRule {
    pub fn spec(&self) -> AshaSpec {
        AshaSpec {
            grace_period: self.grace_period,
            reduction_factor: self.reduction_factor,
        }
    }
}

/// Choose the best point of a training sweep (of one stage, and one fold for stage 2) and hand its adapter on
/// as this job's output, with `selection.json` recording every point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelectConfig {
    pub stage: Stage,
    pub fold: Option<usize>,
    pub select: Selection,
    pub candidates: Vec<Candidate>,
}

/// Summarise one patient's history: stage 1 writes the impressions the CSV leaves empty (from the findings),
/// then the impressions are folded in date order through the stage-2 adapter, each step's input being the
/// running summary and the next impression ([`SummarizeConfig::chain_template`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummarizeConfig {
    pub subject_id: String,
    /// Digest of the history CSV (input role [`input_role::HISTORIES`]).
    pub histories_sha256: String,
    pub seed: u64,
    pub model: ModelRef,
    /// The job whose adapter is the stage-1 model (a train or select job).
    pub stage1_adapter: String,
    /// The job whose adapter is the two-stage model used to summarise (one fold's).
    pub stage2_adapter: String,
    /// Stage 1's inference prompt; `{input}` = the findings.
    pub stage1_prompt: String,
    /// Stage 2's inference prompt; `{input}` = the first impression, then the chain template filled in.
    pub stage2_prompt: String,
    pub stage1_generation: GenerationSpec,
    pub stage2_generation: GenerationSpec,
    /// Lower-case and collapse whitespace of model inputs (the manifest's `evaluation.preprocess`).
    pub preprocess: bool,
    /// The stage-2 input for every visit after the first: `{summary}` (so far), `{date}`, `{impression}`.
    pub chain_template: String,
}

/// One point of a sweep as the select job sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The point's number in the sweep (0-based).
    pub point: usize,
    pub values: TrainPoint,
    pub train_job: String,
    /// The evaluation on the validation rows that scores the point, when selecting by a score.
    pub val_eval_job: Option<String>,
}

/// Generate on a test part with a model stage and score it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    pub model_stage: ModelStage,
    pub task: Stage,
    pub fold: Option<usize>,
    pub seed: u64,
    pub model: ModelRef,
    /// The train job whose adapter is applied; `None` for the base model.
    pub adapter: Option<String>,
    /// The task's inference prompt.
    pub prompt: String,
    /// The task's generation settings with any sweep value applied.
    pub generation: GenerationSpec,
    pub data: DataSlice,
    pub metrics: Vec<Metric>,
    pub preprocess: bool,
    /// Digest of the BERTScore encoder folder, when the manifest names one.
    pub bertscore_model: Option<String>,
    pub bertscore_layer: Option<usize>,
    pub radgraph_command: Option<Vec<String>>,
}

/// Tabulate every evaluation like Tables 4.1 and 4.3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportConfig {
    pub experiment: String,
    pub evals: Vec<String>,
    pub metrics: Vec<Metric>,
    pub cells: Vec<EvalCell>,
}

impl JobConfig {
    pub fn kind(&self) -> JobKind {
        match self {
            JobConfig::DataPrep(_) => JobKind::DataPrep,
            JobConfig::Train(_) => JobKind::Train,
            JobConfig::Eval(_) => JobKind::Eval,
            JobConfig::Report(_) => JobKind::Report,
            JobConfig::Select(_) => JobKind::Select,
            JobConfig::Summarize(_) => JobKind::Summarize,
        }
    }
}

/// (config hash, job id) of a config.
pub fn identity(config: &JobConfig) -> (String, String) {
    identity_of_bytes(config.kind(), &super::wire::config_bytes(config))
}

/// (config hash, job id) of a job of `kind` whose config is the canonical JSON `config` (as sent on the wire):
/// the coordinator checks ids with this, without decoding the config.
pub fn identity_of_bytes(kind: JobKind, config: &[u8]) -> (String, String) {
    let config_hash = sha256_hex(config);
    let id = sha256_hex(
        format!(
            "tandem-job-v1\n{ENGINE_REVISION}\n{}\n{config_hash}",
            kind.as_str()
        )
        .as_bytes(),
    );
    (config_hash, id)
}
