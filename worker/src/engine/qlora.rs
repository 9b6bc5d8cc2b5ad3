//! QLoRA: the frozen linear weights of a model held as NF4 with double quantisation (`tandem_kernels::nf4`)
//! and dequantised whenever a forward or backward pass needs them, so only one layer's dense weight is alive
//! at a time.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use tandem_kernels::nf4::{self, Nf4Tensor};

use super::error::{EngineError, Result};
use super::lora::{FrozenWeight, QuantizedWeight};
use super::model::LanguageModel;
use super::ops::WeightSource;

/// A frozen `[out, in]` weight stored as NF4.
#[derive(Debug)]
pub struct Nf4Weight(pub Nf4Tensor);

/// Values decoded per parallel task (a multiple of the NF4 block and even, so tasks split no byte or block).
const DECODE_PER_TASK: usize = nf4::BLOCK * 256;

impl Nf4Weight {
    /// The dense `[out, in]` values, bit for bit `Nf4Tensor::dequantize` (`LEVELS[code] * absmax[block]`),
    /// decoded two codes per byte and split across rayon's threads: QLoRA decodes every frozen weight twice a
    /// training step (forward and backward), which on one thread took as long as the products it fed.
    pub fn dequantize(&self) -> Vec<f32> {
        let q = &self.0;
        let absmax = q.absmax().dequantize();
        let codes = q.codes();
        let mut out = vec![0f32; q.len()];
        let fill = |(task, dst): (usize, &mut [f32])| {
            let first = task * DECODE_PER_TASK;
            for (j, pair) in dst.chunks_mut(2).enumerate() {
                let i = first + 2 * j;
                let byte = codes[i / 2];
                // Both codes of a byte lie in one block (blocks have an even length).
                let scale = absmax[i / nf4::BLOCK];
                pair[0] = nf4::LEVELS[usize::from(byte >> 4)] * scale;
                if let Some(second) = pair.get_mut(1) {
                    *second = nf4::LEVELS[usize::from(byte & 0x0f)] * scale;
                }
            }
        };
        if out.len() > DECODE_PER_TASK && rayon::current_num_threads() > 1 {
            out.par_chunks_mut(DECODE_PER_TASK)
                .enumerate()
                .for_each(fill);
        } else {
            out.chunks_mut(DECODE_PER_TASK).enumerate().for_each(fill);
        }
        out
    }
}

impl WeightSource for Nf4Weight {
    fn matrix(&self) -> candle_core::Result<Tensor> {
        Tensor::from_vec(
            self.dequantize(),
            (self.0.rows(), self.0.cols()),
            &Device::Cpu,
        )
    }
}

impl QuantizedWeight for Nf4Weight {
    fn dims(&self) -> (usize, usize) {
        (self.0.rows(), self.0.cols())
    }

    fn storage_bytes(&self) -> usize {
        self.0.bytes()
    }
}

/// Quantises a dense `[out, in]` matrix to NF4 with double quantisation.
pub fn quantize(weight: &Tensor) -> Result<Nf4Weight> {
    let (rows, cols) = weight.dims2()?;
    let values = weight.flatten_all()?.to_vec1::<f32>()?;
    let q = Nf4Tensor::quantize(&values, rows, cols, true)
        .map_err(|e| EngineError::Input(format!("NF4 quantisation failed: {e}")))?;
    Ok(Nf4Weight(q))
}

/// Replaces every frozen linear weight of `model` (attention and MLP projections; not the embedding or the LM
/// head, as bitsandbytes QLoRA) by its NF4 form. Returns the number of layers quantised.
pub fn quantize_model(model: &mut dyn LanguageModel) -> Result<usize> {
    let mut count = 0;
    for layer in model.linears_mut() {
        let FrozenWeight::Dense(w) = layer.base() else {
            continue;
        };
        let q = quantize(w)?;
        layer.set_quantized(Arc::new(q))?;
        count += 1;
    }
    Ok(count)
}

/// Bytes the quantised layers of `model` would take held dequantised (f32).
pub fn dequantized_bytes(model: &dyn LanguageModel) -> usize {
    model
        .linears()
        .into_iter()
        .filter(|l| matches!(l.base(), FrozenWeight::Quantized(_)))
        .map(|l| l.in_features * l.out_features * 4)
        .sum()
}

/// Holds every quantised layer of `model` dequantised ([`LoraLinear::hold_dequantized`]): outputs and gradients
/// are bit for bit those of decoding on each use, at f32 memory cost, without the per-use decode. Returns the
/// bytes added.
///
/// [`LoraLinear::hold_dequantized`]: super::lora::LoraLinear::hold_dequantized
pub fn hold_dequantized(model: &mut dyn LanguageModel) -> Result<usize> {
    let mut bytes = 0;
    for layer in model.linears_mut() {
        bytes += layer.hold_dequantized()?;
    }
    Ok(bytes)
}

/// Quantised models whose NF4 layers take at most this much as f32 are held dequantised by
/// [`hold_if_small`]: on a CPU the per-use decode costs more than the matmul it feeds, and a small model's
/// dense copy is cheap. Larger models decode on use, as QLoRA intends.
pub const HOLD_DEQUANTIZED_MAX_BYTES: usize = 2 << 30;

/// [`hold_dequantized`] when the dense copy takes at most [`HOLD_DEQUANTIZED_MAX_BYTES`]; returns the bytes
/// held (0 when the model has no quantised layers or is too large).
pub fn hold_if_small(model: &mut dyn LanguageModel) -> Result<usize> {
    let dense = dequantized_bytes(&*model);
    if dense == 0 || dense > HOLD_DEQUANTIZED_MAX_BYTES {
        return Ok(0);
    }
    let held = hold_dequantized(model)?;
    tracing::info!(mib = held >> 20, "NF4 layers held dequantised");
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_decoding_gives_the_reference_bits() {
        for (rows, cols) in [(1, 1), (3, 37), (7, 129), (300, 577)] {
            let values: Vec<f32> = (0..rows * cols)
                .map(|i| {
                    ((i as u32).wrapping_mul(2_654_435_761) >> 8) as f32 / (1u32 << 24) as f32 - 0.5
                })
                .collect();
            let w = Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap();
            let q = quantize(&w).unwrap();
            let want = q.0.dequantize();
            let serial = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap()
                .install(|| q.dequantize());
            let parallel = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap()
                .install(|| q.dequantize());
            assert_eq!(serial, want, "{rows} x {cols}");
            assert_eq!(parallel, want, "{rows} x {cols}");
        }
    }
}
