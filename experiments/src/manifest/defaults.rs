//! The thesis's values (`shared/thesis/THESIS.md`), used wherever a manifest is silent.

use super::types::*;

/// Stage-1 training prompt; the target impression follows it.
pub const STAGE1_TRAIN_PROMPT: &str = "Below is a patient's chest X-ray findings: {input}\nTask: Provide a concise Impression that captures the key abnormalities and overall interpretation:";
/// Stage-1 inference prompt.
pub const STAGE1_INFERENCE_PROMPT: &str = "Task: Provide a concise summary that captures the key abnormalities and overall interpretation of the following findings: {input}";
/// Stage-2 training prompt.
pub const STAGE2_TRAIN_PROMPT: &str = "Task: Given the following radiology impression, summarize it focusing on key findings and changes: {input}";
/// Stage-2 inference prompt.
pub const STAGE2_INFERENCE_PROMPT: &str = "Task: Given the following radiology impression, summarize it focusing on key information and observed changes: {input}";

/// The placeholder every prompt template must contain.
pub const INPUT_PLACEHOLDER: &str = "{input}";

pub const SEED: u64 = 42;
pub const TEAM: &str = "default";
/// The worker chooses: the CUDA engine when a job is given GPUs and its family has one, else the CPU.
pub const DEVICE: DevicePreference = DevicePreference::Auto;

pub fn lora() -> LoraSpec {
    LoraSpec {
        r: 32,
        alpha: 64.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    }
}

/// LoRA targets for a family when the manifest names none.
pub fn target_modules(family: ModelFamily) -> Vec<String> {
    match family {
        ModelFamily::Llama => vec!["q_proj".into(), "v_proj".into()],
        ModelFamily::T5 => vec!["q".into(), "v".into()],
    }
}

/// Every LoRA target module name a family's layers have (q/k/v/o projections and the MLP).
pub fn known_target_modules(family: ModelFamily) -> &'static [&'static str] {
    match family {
        ModelFamily::Llama => &[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        ModelFamily::T5 => &["q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1"],
    }
}

/// The thesis quantised LLaMA (QLoRA) and kept T5 unquantised (plain LoRA).
pub fn quantization(family: ModelFamily) -> Quantization {
    match family {
        ModelFamily::Llama => Quantization::Nf4,
        ModelFamily::T5 => Quantization::None,
    }
}

/// fp16 compute for the QLoRA LLaMA as in the thesis; f32 for T5 (fp16 T5 overflows).
pub fn compute_dtype(family: ModelFamily) -> ComputeDtype {
    match family {
        ModelFamily::Llama => ComputeDtype::F16,
        ModelFamily::T5 => ComputeDtype::F32,
    }
}

pub fn training(stage: Stage) -> TrainingSpec {
    match stage {
        Stage::Stage1 => TrainingSpec {
            batch_size: 2,
            grad_accum: 4,
            lr: 1e-5,
            warmup_steps: 100,
            weight_decay: 0.01,
            epochs: 10.0,
            max_grad_norm: 1.0,
            eval_every: 100,
            log_every: 50,
            checkpoint_every: 500,
            checkpoints_kept: 2,
            early_stopping_patience: 3,
            max_length: 1024,
            loss_mask: LossMask::Prompt,
            max_steps: None,
        },
        Stage::Stage2 => TrainingSpec {
            batch_size: 4,
            grad_accum: 8,
            lr: 1e-5,
            warmup_steps: 20,
            weight_decay: 0.01,
            epochs: 100.0,
            max_grad_norm: 1.0,
            eval_every: 25,
            log_every: 25,
            checkpoint_every: 50,
            checkpoints_kept: 2,
            early_stopping_patience: 3,
            max_length: 1024,
            loss_mask: LossMask::Prompt,
            max_steps: None,
        },
    }
}

pub fn generation(stage: Stage) -> GenerationSpec {
    match stage {
        Stage::Stage1 => GenerationSpec {
            max_new_tokens: 128,
            min_new_tokens: 0,
            do_sample: true,
            temperature: 0.7,
            top_k: 50,
            top_p: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            repetition_penalty: 1.0,
            early_stopping: false,
            max_eval_rows: None,
        },
        Stage::Stage2 => GenerationSpec {
            max_new_tokens: 128,
            min_new_tokens: 0,
            do_sample: true,
            temperature: 0.6,
            top_k: 50,
            top_p: 0.9,
            num_beams: 10,
            length_penalty: 0.3,
            repetition_penalty: 1.1,
            early_stopping: false,
            max_eval_rows: None,
        },
    }
}

pub fn prompt(stage: Stage) -> PromptSpec {
    match stage {
        Stage::Stage1 => PromptSpec {
            train: STAGE1_TRAIN_PROMPT.into(),
            inference: STAGE1_INFERENCE_PROMPT.into(),
        },
        Stage::Stage2 => PromptSpec {
            train: STAGE2_TRAIN_PROMPT.into(),
            inference: STAGE2_INFERENCE_PROMPT.into(),
        },
    }
}

pub fn split(stage: Stage) -> SplitSpec {
    match stage {
        Stage::Stage1 => SplitSpec::Holdout {
            train: 0.8,
            val: 0.1,
            test: 0.1,
        },
        Stage::Stage2 => SplitSpec::Kfold {
            folds: 5,
            val_fraction: 0.1,
        },
    }
}

/// Stage-1 columns of a findings/impression CSV; stage 2 reads impression -> summary.
pub fn columns(stage: Stage) -> (&'static str, &'static str) {
    match stage {
        Stage::Stage1 => ("findings", "impression"),
        Stage::Stage2 => ("impression", "summary"),
    }
}

/// The thesis's sweep: stage-2 temperature over [0.1, 0.4, 0.5, 0.6, 1.0].
pub fn sweeps() -> Vec<SweepSpec> {
    vec![SweepSpec {
        stage: Stage::Stage2,
        parameter: SweepParameter::Temperature,
        values: vec![0.1, 0.4, 0.5, 0.6, 1.0],
    }]
}

/// Tables 4.1 and 4.3: every model stage on both tasks (stage-2 model on the stage-1 task is the forgetting check).
pub fn evaluation() -> EvaluationSpec {
    let mut cells = Vec::new();
    for task in [Stage::Stage1, Stage::Stage2] {
        for model in [ModelStage::Base, ModelStage::Stage1, ModelStage::TwoStage] {
            cells.push(EvalCell { model, task });
        }
    }
    EvaluationSpec {
        metrics: vec![
            Metric::Bleu,
            Metric::Rouge,
            Metric::Meteor,
            Metric::Bertscore,
            Metric::Radgraph,
        ],
        cells,
        preprocess: true,
        bertscore_model: None,
        bertscore_layer: None,
        radgraph_command: None,
    }
}

pub fn resources() -> ResourcesSpec {
    let cpu = |threads| ResourceRequest {
        gpus: 0,
        gpu_memory_gb: 0,
        cpu_threads: threads,
    };
    ResourcesSpec {
        data_prep: cpu(1),
        train: ResourceRequest {
            gpus: 1,
            gpu_memory_gb: 24,
            cpu_threads: 2,
        },
        eval: ResourceRequest {
            gpus: 1,
            gpu_memory_gb: 16,
            cpu_threads: 2,
        },
        report: cpu(1),
    }
}
