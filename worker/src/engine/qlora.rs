//! QLoRA: the frozen linear weights of a model held as NF4 with double quantisation and dequantised whenever a
//! forward or backward pass needs them.

use super::error::{EngineError, Result};
use super::llama::Llama;

/// Replaces every frozen linear weight of `model` by its NF4 form.
pub fn quantize_model(_model: &mut Llama) -> Result<()> {
    Err(EngineError::Input(
        "model.quantization = \"nf4\": the NF4 kernels are not in this build yet".into(),
    ))
}
