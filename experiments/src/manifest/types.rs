//! The resolved experiment manifest: plain, fully-defaulted, validated types that the planner, the engine and
//! the coordinator consume. Parsing (with spans) and validation live beside this file; defaults are the thesis's.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One whole experiment: what a lab writes in a manifest, after defaults are filled in and validation passed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub seed: u64,
    pub team: String,
    pub description: String,
    pub model: ModelSpec,
    pub lora: LoraSpec,
    pub stage1: StageSpec,
    pub stage2: StageSpec,
    pub sweeps: Vec<SweepSpec>,
    /// A sweep over one stage's LoRA and training settings; left out of the canonical form when absent (so
    /// manifests and hashes from before it existed stay the same).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_sweep: Option<super::training_sweep::TrainingSweep>,
    pub evaluation: EvaluationSpec,
    pub resources: ResourcesSpec,
}

/// Which architecture family a model belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFamily {
    Llama,
    T5,
}

/// Where a model's train and eval jobs compute: `auto` lets the worker choose (the CUDA engine when the job is
/// given GPUs and the family has one, else the CPU), `cpu` keeps them on the CPU, `cuda` requires a GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePreference {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DevicePreference {
    pub const ALL: [DevicePreference; 3] = [
        DevicePreference::Auto,
        DevicePreference::Cpu,
        DevicePreference::Cuda,
    ];

    /// The name used in manifests: `auto`, `cpu`, `cuda`.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePreference::Auto => "auto",
            DevicePreference::Cpu => "cpu",
            DevicePreference::Cuda => "cuda",
        }
    }

    /// True for the default, which serialised forms leave out (so configs and hashes from before the field
    /// existed stay the same).
    pub fn is_auto(&self) -> bool {
        *self == DevicePreference::Auto
    }
}

/// How frozen base weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// QLoRA: NF4, block 64, double quantisation of the absmax.
    Nf4,
    None,
}

/// Floating-point type of the compute (activations, dequantised weights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDtype {
    F32,
    F16,
    Bf16,
}

/// The base model: family, where its weights are, and how they are held in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub family: ModelFamily,
    /// A Hugging Face directory (config.json, safetensors, tokenizer.json) or a `.gguf` file.
    /// Relative paths are resolved against the manifest's folder.
    pub path: PathBuf,
    pub quantization: Quantization,
    pub compute_dtype: ComputeDtype,
    /// Where train and eval jobs compute; left out of the canonical form when `auto`.
    #[serde(default, skip_serializing_if = "DevicePreference::is_auto")]
    pub device: DevicePreference,
}

/// LoRA adapter settings (PEFT semantics: scale = alpha / r, bias none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<String>,
}

/// What a stage's dataset file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// A CSV with named input/target columns (IU X-ray, the output of `tandem data mimic`, user CSVs).
    Csv,
    /// A raw MIMIC-CXR report tree (folder or .zip), converted by the data-prep job.
    Mimic,
}

/// What to do with a row that is missing a column or has empty text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadRows {
    /// Stop with an error naming the row.
    Error,
    /// Drop the row and count it in the data-prep summary.
    Drop,
}

/// A stage's data: which file, which columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    pub path: PathBuf,
    pub format: DatasetFormat,
    pub input_column: String,
    pub target_column: String,
    /// Rows sharing a value never straddle train/val/test of one split or fold (e.g. patient id).
    pub group_column: Option<String>,
    pub bad_rows: BadRows,
    /// Rows used at most (after dropping bad ones, before splitting); `None` = all.
    pub max_rows: Option<usize>,
}

/// How a stage's rows are divided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SplitSpec {
    /// One seeded train/val/test split; the fractions sum to 1.
    Holdout { train: f64, val: f64, test: f64 },
    /// k-fold cross-validation: every row is in exactly one of the k test folds; of the rest, `val_fraction`
    /// (of all rows) is held out for validation and the remainder trains.
    Kfold { folds: usize, val_fraction: f64 },
}

/// Which tokens count in the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossMask {
    /// Prompt and padding tokens are masked (-100); only the target is learned.
    Prompt,
    /// Only padding is masked, as in the thesis's scripts.
    Pad,
}

/// Prompt templates; `{input}` is replaced by the (pre-processed) input text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptSpec {
    pub train: String,
    pub inference: String,
}

/// Every training hyperparameter the thesis sets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSpec {
    pub batch_size: usize,
    pub grad_accum: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub epochs: f64,
    pub max_grad_norm: f64,
    /// Optimizer steps between evaluations on the validation set.
    pub eval_every: usize,
    pub log_every: usize,
    pub checkpoint_every: usize,
    pub checkpoints_kept: usize,
    /// Evaluations without improvement of the validation loss before stopping; 0 disables early stopping.
    pub early_stopping_patience: usize,
    pub max_length: usize,
    pub loss_mask: LossMask,
    /// Optimizer steps at most (a cap for smoke runs); `None` = as many as the epochs give.
    pub max_steps: Option<usize>,
}

/// Decoding settings (transformers' `generate` semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationSpec {
    pub max_new_tokens: usize,
    /// End-of-sequence is suppressed until this many new tokens exist (transformers' `min_new_tokens`).
    #[serde(default)]
    pub min_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    pub top_k: usize,
    pub top_p: f64,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub repetition_penalty: f64,
    pub early_stopping: bool,
    /// Test rows generated at most per evaluation; `None` = the whole test set.
    pub max_eval_rows: Option<usize>,
}

/// One stage: data, split, prompts, training and generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub dataset: DatasetSpec,
    pub split: SplitSpec,
    pub prompt: PromptSpec,
    pub training: TrainingSpec,
    pub generation: GenerationSpec,
}

/// Which stage a setting or job belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Stage1,
    Stage2,
}

/// A generation parameter that a sweep can vary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepParameter {
    Temperature,
    TopK,
    TopP,
    NumBeams,
    LengthPenalty,
    RepetitionPenalty,
    MaxNewTokens,
}

/// One evaluation per value of `parameter`, on `stage`'s task with that stage's fine-tuned model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepSpec {
    pub stage: Stage,
    pub parameter: SweepParameter,
    pub values: Vec<f64>,
}

/// A metric of the thesis's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Bleu,
    Rouge,
    Meteor,
    Bertscore,
    Radgraph,
}

/// Which model a table row is: the base model, after stage 1, or after both stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelStage {
    Base,
    Stage1,
    TwoStage,
}

/// One cell of the evaluation matrix: a model stage evaluated on a stage's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EvalCell {
    pub model: ModelStage,
    pub task: Stage,
}

/// What to evaluate and with which metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationSpec {
    pub metrics: Vec<Metric>,
    pub cells: Vec<EvalCell>,
    /// Lower-case and normalise whitespace before scoring (the thesis does).
    pub preprocess: bool,
    /// Local Hugging Face directory of the BERTScore encoder; `None` = the default all-MiniLM-L6-v2 cache.
    pub bertscore_model: Option<PathBuf>,
    /// Layer whose output BERTScore uses; `None` = the encoder's default.
    pub bertscore_layer: Option<usize>,
    /// External RadGraph extractor command (JSON lines); `None` = RG reported as not available.
    pub radgraph_command: Option<Vec<String>>,
}

/// What one job of a kind asks of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceRequest {
    pub gpus: u32,
    pub gpu_memory_gb: u32,
    pub cpu_threads: u32,
}

/// Resources per job kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourcesSpec {
    pub data_prep: ResourceRequest,
    pub train: ResourceRequest,
    pub eval: ResourceRequest,
    pub report: ResourceRequest,
}

impl ModelStage {
    pub const ALL: [ModelStage; 3] = [ModelStage::Base, ModelStage::Stage1, ModelStage::TwoStage];

    /// The name used in manifests and job labels: `base`, `stage1`, `two-stage`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStage::Base => "base",
            ModelStage::Stage1 => "stage1",
            ModelStage::TwoStage => "two-stage",
        }
    }
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Stage1, Stage::Stage2];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Stage1 => "stage1",
            Stage::Stage2 => "stage2",
        }
    }
}

impl EvalCell {
    /// Every cell of Tables 4.1 (task stage1) and 4.3 (task stage2).
    pub fn all() -> Vec<EvalCell> {
        Stage::ALL
            .into_iter()
            .flat_map(|task| {
                ModelStage::ALL
                    .into_iter()
                    .map(move |model| EvalCell { model, task })
            })
            .collect()
    }

    /// Parses the manifest spelling `MODEL:TASK`, e.g. `two-stage:stage1` (the forgetting check).
    pub fn parse(text: &str) -> Option<EvalCell> {
        let (model, task) = text.split_once(':')?;
        let model = ModelStage::ALL
            .into_iter()
            .find(|m| m.as_str() == model.trim())?;
        let task = Stage::ALL.into_iter().find(|t| t.as_str() == task.trim())?;
        Some(EvalCell { model, task })
    }
}

impl std::fmt::Display for EvalCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.model.as_str(), self.task.as_str())
    }
}

impl SweepParameter {
    /// The name used in manifests (`temperature`, `top_k`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SweepParameter::Temperature => "temperature",
            SweepParameter::TopK => "top_k",
            SweepParameter::TopP => "top_p",
            SweepParameter::NumBeams => "num_beams",
            SweepParameter::LengthPenalty => "length_penalty",
            SweepParameter::RepetitionPenalty => "repetition_penalty",
            SweepParameter::MaxNewTokens => "max_new_tokens",
        }
    }

    /// Whether the parameter takes whole numbers.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            SweepParameter::TopK | SweepParameter::NumBeams | SweepParameter::MaxNewTokens
        )
    }
}

impl GenerationSpec {
    /// This generation with `parameter` set to `value` (integers are taken as `value as usize`; the manifest
    /// validation guarantees they are whole and in range).
    pub fn with(&self, parameter: SweepParameter, value: f64) -> GenerationSpec {
        let mut out = self.clone();
        match parameter {
            SweepParameter::Temperature => out.temperature = value,
            SweepParameter::TopK => out.top_k = value as usize,
            SweepParameter::TopP => out.top_p = value,
            SweepParameter::NumBeams => out.num_beams = value as usize,
            SweepParameter::LengthPenalty => out.length_penalty = value,
            SweepParameter::RepetitionPenalty => out.repetition_penalty = value,
            SweepParameter::MaxNewTokens => out.max_new_tokens = value as usize,
        }
        out
    }

    /// The current value of `parameter`.
    pub fn get(&self, parameter: SweepParameter) -> f64 {
        match parameter {
            SweepParameter::Temperature => self.temperature,
            SweepParameter::TopK => self.top_k as f64,
            SweepParameter::TopP => self.top_p,
            SweepParameter::NumBeams => self.num_beams as f64,
            SweepParameter::LengthPenalty => self.length_penalty,
            SweepParameter::RepetitionPenalty => self.repetition_penalty,
            SweepParameter::MaxNewTokens => self.max_new_tokens as f64,
        }
    }
}

impl Manifest {
    pub fn stage(&self, stage: Stage) -> &StageSpec {
        match stage {
            Stage::Stage1 => &self.stage1,
            Stage::Stage2 => &self.stage2,
        }
    }
}
