//! A model loaded on the kernel engine for a job, with its tokenizer and its device erased: what the job
//! runners hold, train through [`Trainable`] and generate from through [`TextModel`].

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::cuda::Cuda;
use super::device::Device;
use super::model::KernelLlama;
use super::reference::Reference;
use crate::engine::error::{EngineError, Result};
use crate::engine::llama;
use crate::engine::load::TextModel;
use crate::engine::model::Decoder;
use crate::engine::train::trainable::Trainable;

/// What a job needs of a kernel-engine model, whatever its device.
pub trait KernelJob: Trainable + Decoder {
    /// What the model runs on, for logs and errors.
    fn device_name(&self) -> String;
    /// Bytes the device holds for the frozen weights.
    fn frozen_bytes(&self) -> usize;
}

impl<D: Device> KernelJob for KernelLlama<D> {
    fn device_name(&self) -> String {
        self.device.describe()
    }

    fn frozen_bytes(&self) -> usize {
        KernelLlama::frozen_bytes(self)
    }
}

/// A LLaMA-family model on the kernel engine, with its tokenizer.
pub struct KernelModel {
    pub model: Box<dyn KernelJob>,
    pub tokenizer: Tokenizer,
}

impl KernelModel {
    /// Opens the checkpoint at `path` (a Hugging Face folder or a GGUF file) and loads it onto `device`, one
    /// tensor at a time, the projections quantised to NF4 when `nf4`.
    pub fn load<D: Device>(device: Arc<D>, path: &Path, nf4: bool) -> Result<Self> {
        let mut checkpoint = llama::open(path)?;
        let model = KernelLlama::load(device, &mut checkpoint, nf4)?;
        tracing::info!(
            device = %model.device.describe(),
            frozen_mib = model.frozen_bytes() >> 20,
            nf4,
            "model loaded on the kernel engine"
        );
        Ok(Self {
            model: Box::new(model),
            tokenizer: checkpoint.tokenizer,
        })
    }

    /// The model as the training loop drives it.
    pub fn trainable(&mut self) -> &mut dyn Trainable {
        self.model.as_mut()
    }
}

impl TextModel for KernelModel {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    fn decoder(&self) -> &dyn Decoder {
        self.model.as_ref()
    }
}

/// Loads the model at `path` on the kernel engine for a job pinned to GPU `ordinals` (the first one computes;
/// the engine does not split a job over several GPUs). `TANDEM_KERNEL_DEVICE=reference` runs such jobs on the
/// reference device instead, on the CPU: how the GPU job path is tested on machines without a GPU.
pub fn load_on_gpus(ordinals: &[u32], path: &Path, nf4: bool) -> Result<KernelModel> {
    let Some(&first) = ordinals.first() else {
        return Err(EngineError::Input(
            "the kernel engine was given no GPU ordinal".into(),
        ));
    };
    if ordinals.len() > 1 {
        tracing::warn!(
            ?ordinals,
            "the kernel engine computes a job on one GPU; the others stay idle"
        );
    }
    match std::env::var(DEVICE_VAR).ok().as_deref() {
        None | Some("") | Some("cuda") => cuda_model(first, path, nf4),
        Some("reference") => KernelModel::load(Arc::new(Reference), path, nf4),
        Some(other) => Err(EngineError::Input(format!(
            "{DEVICE_VAR}={other:?}: accepted: \"cuda\" (the default) or \"reference\""
        ))),
    }
}

/// The variable that picks the kernel engine's device for GPU jobs.
pub const DEVICE_VAR: &str = "TANDEM_KERNEL_DEVICE";

fn cuda_model(ordinal: u32, path: &Path, nf4: bool) -> Result<KernelModel> {
    KernelModel::load(Arc::new(Cuda::new(ordinal as usize)?), path, nf4)
}
