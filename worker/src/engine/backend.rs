//! Where a job's compute runs: the CPU engine, or the CUDA engine on the GPU ordinals the worker pinned the job
//! to. One function ([`choose`]) decides, from the manifest's `model.device`, the model family and those ordinals.

use std::fmt;

use std::path::Path;

use tandem_experiments::manifest::{ComputeDtype, DevicePreference, ModelFamily, Quantization};
use tokenizers::Tokenizer;

use super::error::{EngineError, Result};
use super::kernel::{self, loaded::KernelModel};
use super::load::{LoadedModel, ModelOptions, TextModel, load_model};
use super::model::Decoder;
use super::train::trainable::{CpuModel, Trainable};
use super::{packed, qlora};

/// Where a job's compute runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Cuda { ordinals: Vec<u32> },
}

impl Backend {
    /// The GPU ordinals the job computes on (empty on the CPU).
    pub fn ordinals(&self) -> &[u32] {
        match self {
            Backend::Cpu => &[],
            Backend::Cuda { ordinals } => ordinals,
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Cpu => write!(f, "cpu"),
            Backend::Cuda { ordinals } => {
                let list: Vec<String> = ordinals.iter().map(u32::to_string).collect();
                write!(f, "cuda:{}", list.join(","))
            }
        }
    }
}

/// The backend of a job whose manifest says `pref`, of model family `family`, given the GPU ordinals
/// `assigned_gpus` (empty: the job was given no GPU).
///
/// `cpu` computes on the CPU. `cuda` needs at least one ordinal and a LLaMA model. `auto` takes the CUDA engine
/// when the job has GPUs and the family is LLaMA; a T5 job given GPUs runs on the CPU (with a warning: the
/// manifest allowed it); a job without GPUs runs on the CPU.
pub fn choose(
    pref: DevicePreference,
    family: ModelFamily,
    assigned_gpus: &[u32],
) -> Result<Backend> {
    let cuda = || Backend::Cuda {
        ordinals: assigned_gpus.to_vec(),
    };
    match (pref, family, assigned_gpus.is_empty()) {
        (DevicePreference::Cpu, _, _) => Ok(Backend::Cpu),
        (DevicePreference::Cuda, _, true) => Err(EngineError::Input(
            "model.device = \"cuda\", but the job was given no GPU (a worker gives a job the GPUs its \
             resources ask for; `tandem-worker train|generate` take --gpu N): set resources.<kind>.gpus >= 1, \
             or model.device = \"auto\" or \"cpu\""
                .into(),
        )),
        (DevicePreference::Cuda, ModelFamily::T5, false) => Err(EngineError::Input(
            "the CUDA engine covers the LLaMA family; T5 runs on the CPU: set model.device = \"auto\" or \"cpu\""
                .into(),
        )),
        (DevicePreference::Cuda, ModelFamily::Llama, false) => Ok(cuda()),
        (DevicePreference::Auto, _, true) => Ok(Backend::Cpu),
        (DevicePreference::Auto, ModelFamily::Llama, false) => Ok(cuda()),
        (DevicePreference::Auto, ModelFamily::T5, false) => {
            tracing::warn!(
                gpus = ?assigned_gpus,
                "the CUDA engine covers the LLaMA family; this T5 job runs on the CPU and leaves its GPUs idle"
            );
            Ok(Backend::Cpu)
        }
    }
}

/// A base model loaded on the engine its backend chose, with its tokenizer: what a job trains
/// ([`EngineModel::trainable`]) and generates from ([`TextModel`]).
pub enum EngineModel {
    /// The candle engine on the CPU.
    Cpu(LoadedModel),
    /// The kernel engine (LLaMA family) on a device.
    Kernel(KernelModel),
}

impl EngineModel {
    /// Loads the model at `path` for `backend` (as [`choose`] made it, so never T5 on CUDA): the candle engine on
    /// the CPU (a QLoRA model small enough held dequantised), or the kernel engine on the first of the job's GPUs.
    pub fn load(path: &Path, options: ModelOptions, backend: &Backend) -> Result<Self> {
        match backend {
            Backend::Cpu => {
                let mut loaded = load_model(path, options)?;
                if options.compute_dtype == ComputeDtype::Bf16 {
                    packed::pack_model(loaded.model.as_mut())?;
                } else {
                    qlora::hold_if_small(loaded.model.as_mut())?;
                }
                Ok(EngineModel::Cpu(loaded))
            }
            Backend::Cuda { ordinals } => {
                let nf4 = options.quantization == Quantization::Nf4;
                Ok(EngineModel::Kernel(kernel::loaded::load_on_gpus(
                    ordinals, path, nf4,
                )?))
            }
        }
    }

    /// The model as the training loop drives it.
    pub fn trainable(&mut self) -> Box<dyn Trainable + '_> {
        match self {
            EngineModel::Cpu(loaded) => Box::new(CpuModel(loaded.model.as_mut())),
            EngineModel::Kernel(k) => Box::new(k.trainable()),
        }
    }
}

impl TextModel for EngineModel {
    fn tokenizer(&self) -> &Tokenizer {
        match self {
            EngineModel::Cpu(m) => m.tokenizer(),
            EngineModel::Kernel(m) => m.tokenizer(),
        }
    }

    fn decoder(&self) -> &dyn Decoder {
        match self {
            EngineModel::Cpu(m) => m.decoder(),
            EngineModel::Kernel(m) => m.decoder(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use DevicePreference::{Auto, Cpu, Cuda};
    use ModelFamily::{Llama, T5};

    fn message(result: Result<Backend>) -> String {
        match result {
            Err(EngineError::Input(message)) => message,
            other => panic!("expected an input error, got {other:?}"),
        }
    }

    #[test]
    fn cpu_preference_always_runs_on_the_cpu() {
        for family in [Llama, T5] {
            assert_eq!(choose(Cpu, family, &[]).unwrap(), Backend::Cpu);
            assert_eq!(choose(Cpu, family, &[0, 1]).unwrap(), Backend::Cpu);
        }
    }

    #[test]
    fn cuda_preference_takes_every_assigned_ordinal_for_llama() {
        assert_eq!(
            choose(Cuda, Llama, &[2, 3]).unwrap(),
            Backend::Cuda {
                ordinals: vec![2, 3]
            }
        );
    }

    #[test]
    fn cuda_preference_without_a_gpu_names_the_field() {
        let message = message(choose(Cuda, Llama, &[]));
        assert!(message.contains("model.device = \"cuda\""), "{message}");
        assert!(message.contains("given no GPU"), "{message}");
    }

    #[test]
    fn cuda_preference_refuses_t5() {
        assert_eq!(
            message(choose(Cuda, T5, &[0])),
            "the CUDA engine covers the LLaMA family; T5 runs on the CPU: set model.device = \"auto\" or \"cpu\""
        );
    }

    #[test]
    fn auto_takes_the_gpu_for_llama_and_the_cpu_otherwise() {
        assert_eq!(
            choose(Auto, Llama, &[1]).unwrap(),
            Backend::Cuda { ordinals: vec![1] }
        );
        assert_eq!(choose(Auto, Llama, &[]).unwrap(), Backend::Cpu);
        assert_eq!(choose(Auto, T5, &[]).unwrap(), Backend::Cpu);
        // The manifest allowed GPUs for T5; the job runs on the CPU (with a warning).
        assert_eq!(choose(Auto, T5, &[0]).unwrap(), Backend::Cpu);
    }

    #[test]
    fn backends_print_their_ordinals() {
        let backend = Backend::Cuda {
            ordinals: vec![0, 3],
        };
        assert_eq!(backend.to_string(), "cuda:0,3");
        assert_eq!(Backend::Cpu.to_string(), "cpu");
    }
}
