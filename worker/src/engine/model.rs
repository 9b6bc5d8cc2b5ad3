//! The model side of the engine as one trait, so the training loop and generation run any architecture
//! (LLaMA decoder-only, T5 encoder-decoder) the same way.

use std::any::Any;
use std::sync::Arc;

use candle_core::Tensor;
use tandem_experiments::manifest::LossMask;

use super::error::Result;
use super::lora::{ForwardCtx, LoraConfig, LoraLinear};
use super::ops::WeightSource;

/// How a model turns a prompt into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// The prompt and the continuation share one sequence (LLaMA).
    DecoderOnly,
    /// The prompt is encoded; the decoder starts from `decoder_start` (T5).
    EncoderDecoder,
}

/// Token ids with a special meaning to a model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    /// Any of these ends a sequence.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    /// First decoder token of an encoder-decoder model.
    pub decoder_start: Option<u32>,
}

/// One supervised example, tokenised: the prompt (model input) and the target (what is learned). The target
/// already ends with EOS where the model should learn to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainExample {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

/// The summed token loss of a batch and how many tokens it counted.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// Scalar: sum of token cross-entropies (so micro-batches can be normalised by the tokens of a whole step).
    pub loss_sum: Tensor,
    pub tokens: usize,
}

/// Per-sequence state between decoding steps (KV caches, encoder output), owned by the model that made it.
pub trait DecodeState: Send {
    /// Keeps rows `rows` (in that order; a row may repeat): beam reordering and batch selection.
    fn select(&mut self, rows: &[usize]) -> Result<()>;
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Down-casting for the model that owns the state.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// A model that decodes: what generation (greedy, sampling, beam search) needs of any engine.
pub trait Decoder: Send + Sync {
    fn architecture(&self) -> Architecture;
    fn vocab_size(&self) -> usize;
    /// Longest sequence the model accepts (decoder-only: prompt + generated tokens), if bounded.
    fn max_positions(&self) -> Option<usize>;
    fn special_tokens(&self) -> &SpecialTokens;

    /// Starts decoding `prompts` (one row each): returns the state and the logits `[rows, vocab]` of the next
    /// token.
    fn start(&self, prompts: &[Vec<u32>]) -> Result<(Box<dyn DecodeState>, Tensor)>;

    /// Feeds one token per row; returns the logits `[rows, vocab]` of the next token.
    fn step(&self, state: &mut dyn DecodeState, tokens: &[u32]) -> Result<Tensor>;
}

/// A language model the candle CPU engine can train (LoRA through autograd) and decode from.
pub trait LanguageModel: Decoder {
    /// A name of the base model (directory or file name), written into adapters and checked when loading one.
    fn base_name(&self) -> &str;
    /// PEFT `task_type`: `CAUSAL_LM` or `SEQ_2_SEQ_LM`.
    fn peft_task_type(&self) -> &'static str;
    /// Every linear layer that LoRA may target, with its Hugging Face module path.
    fn linears(&self) -> Vec<&LoraLinear>;
    fn linears_mut(&mut self) -> Vec<&mut LoraLinear>;
    /// The frozen LM head, where the model multiplies by it as a [`WeightSource`] (so it can be repacked).
    fn frozen_head_mut(&mut self) -> Option<&mut Arc<dyn WeightSource>> {
        None
    }

    /// Summed cross-entropy of the targets (and, with `LossMask::Pad` on decoder-only models, of the prompts) of
    /// a batch, padded dynamically to its longest sequence.
    fn loss(&self, batch: &[TrainExample], mask: LossMask, ctx: &ForwardCtx) -> Result<LossOutput>;
}

/// The LoRA layers of a model (those that have an update), in model order.
pub fn lora_layers(model: &dyn LanguageModel) -> Vec<&LoraLinear> {
    model
        .linears()
        .into_iter()
        .filter(|l| l.lora().is_some())
        .collect()
}

/// Adds fresh LoRA updates to every targeted linear; errors when a target matches no module.
pub fn add_lora(model: &mut dyn LanguageModel, config: &LoraConfig, seed: u64) -> Result<usize> {
    config.validate()?;
    let paths: Vec<String> = model.linears().iter().map(|l| l.path.clone()).collect();
    config.check_targets(paths.iter().map(String::as_str))?;
    let mut count = 0;
    for layer in model.linears_mut() {
        if config.targets(&layer.path) {
            layer.add_lora(config, seed)?;
            count += 1;
        }
    }
    Ok(count)
}
