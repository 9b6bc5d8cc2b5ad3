//! The T5 encoder-decoder (t5-base, FLAN-T5) on candle, loaded from a Hugging Face directory:
//! shared embeddings, relative position buckets, T5 layer norm, ReLU or gated-GELU feed-forward,
//! the tied LM head's `d_model^-0.5` scaling, a decoder KV cache, and LoRA on any of its linear
//! layers (PEFT module paths).

mod attention;
mod config;
mod stack;

use std::any::Any;
use std::path::Path;

use candle_core::{Device, Tensor};
use tandem_experiments::manifest::LossMask;
use tokenizers::Tokenizer;

pub use attention::{Attention, RelativeBias, relative_position_bucket};
pub use config::{FeedForwardKind, T5Config};
pub use stack::{Decoder, DecoderCache, Encoder, FeedForward, LayerNorm};

use crate::engine::error::{EngineError, Result};
use crate::engine::llama::model::base_name;
use crate::engine::llama::weights::{SafetensorsStore, WeightStore};
use crate::engine::lora::{ForwardCtx, LoraLinear};
use crate::engine::model::{
    self, Architecture, DecodeState, LanguageModel, LossOutput, SpecialTokens, TrainExample,
};
use crate::engine::ops;

/// Loads a T5 model directory (config.json, safetensors weights, tokenizer.json) with its
/// tokenizer; checks that the tokenizer fits the model's vocabulary (t5-base: 32100 tokens for
/// 32128 embeddings).
pub fn load(dir: &Path) -> Result<(T5Model, Tokenizer)> {
    if !dir.is_dir() {
        return Err(EngineError::weights(
            dir,
            "accepted: a Hugging Face T5 model directory",
        ));
    }
    let model = T5Model::load(dir)?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(EngineError::tokenizer(
            &tok_path,
            "missing; a T5 model directory needs tokenizer.json (convert spiece.model with transformers)",
        ));
    }
    let tokenizer = crate::engine::load::read_tokenizer_json(&tok_path)?;
    crate::engine::load::check_tokenizer_fits(
        &tokenizer,
        model.config.vocab_size,
        "config.json vocab_size",
        &tok_path,
    )?;
    Ok((model, tokenizer))
}

/// Label value that the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i64 = -100;

/// A loaded T5 model.
#[derive(Debug)]
pub struct T5Model {
    pub config: T5Config,
    /// The embedding `[vocab, d_model]` shared by encoder, decoder and (tied) LM head.
    shared: Tensor,
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// Frozen `[vocab, d_model]`: the shared embedding when tied, `lm_head.weight` otherwise.
    lm_head: LoraLinear,
    special: SpecialTokens,
    base_name: String,
}

/// The encoder's output for a batch: hidden states `[b, s, d_model]` and the additive padding mask
/// `[b, 1, 1, s]` that the cross-attention applies.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub hidden: Tensor,
    pub key_mask: Tensor,
}

impl T5Model {
    /// Loads `dir/config.json` and the safetensors weights next to it (single file or sharded).
    pub fn load(dir: &Path) -> Result<Self> {
        let config = T5Config::from_file(&dir.join("config.json"))?;
        let mut store = SafetensorsStore::open(dir)?;
        Self::from_weights(config, &mut store, base_name(dir))
    }

    /// Builds the model from `config` and checkpoint tensors; `base_name` is written into adapters.
    pub fn from_weights(
        config: T5Config,
        weights: &mut dyn WeightStore,
        base_name: String,
    ) -> Result<Self> {
        let (vocab, d) = (config.vocab_size, config.d_model);
        let shared_name = if weights.contains("shared.weight") {
            "shared.weight"
        } else {
            "encoder.embed_tokens.weight"
        };
        let shared = weights.get(shared_name, &[vocab, d])?;
        let encoder = Encoder::load(weights, &config)?;
        let decoder = Decoder::load(weights, &config)?;
        let lm_head = if config.tie_word_embeddings {
            // Some checkpoints store the tied head anyway; the shared matrix is what the model
            // uses.
            LoraLinear::dense("lm_head", shared.clone())?
        } else {
            LoraLinear::dense("lm_head", weights.get("lm_head.weight", &[vocab, d])?)?
        };
        let special = SpecialTokens {
            bos: None,
            eos: vec![config.eos_token_id],
            pad: Some(config.pad_token_id),
            decoder_start: Some(config.decoder_start_token_id),
        };
        Ok(Self {
            config,
            shared,
            encoder,
            decoder,
            lm_head,
            special,
            base_name,
        })
    }

    /// Replaces the tokens that end a generated sequence (config.json's `eos_token_id` by default),
    /// e.g. with those of a `generation_config.json`.
    pub fn set_eos_tokens(&mut self, eos: Vec<u32>) {
        self.special.eos = eos;
    }

    /// Embeds rows of token ids (all of one length) into `[b, s, d_model]`.
    pub fn embed(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let (b, s) = rectangle(ids, "token ids")?;
        let vocab = self.config.vocab_size;
        if let Some(bad) = ids.iter().flatten().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::Input(format!(
                "token id {bad} is outside the model's vocabulary of {vocab}"
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let index = Tensor::from_vec(flat, b * s, &Device::Cpu)?;
        Ok(self
            .shared
            .index_select(&index, 0)?
            .reshape((b, s, self.config.d_model))?)
    }

    /// Runs the encoder on `input_ids` (rows of one length); `attention_mask` (1 = token, 0 =
    /// padding) defaults to all ones.
    pub fn encode(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: Option<&[Vec<u32>]>,
        ctx: &ForwardCtx,
    ) -> Result<Encoded> {
        let (b, s) = rectangle(input_ids, "input_ids")?;
        if s == 0 {
            return Err(EngineError::Input("the encoder input is empty".into()));
        }
        if let Some(max) = self.config.max_positions.filter(|&m| s > m) {
            return Err(EngineError::Input(format!(
                "the encoder input has {s} tokens; config.json n_positions allows {max}"
            )));
        }
        let ones;
        let mask = match attention_mask {
            Some(m) => {
                if rectangle(m, "attention_mask")? != (b, s) {
                    return Err(EngineError::Input(format!(
                        "attention_mask is not {b} x {s} like input_ids"
                    )));
                }
                m
            }
            None => {
                ones = vec![vec![1u32; s]; b];
                &ones[..]
            }
        };
        let key_mask = stack::key_mask(mask, &Device::Cpu)?;
        let hidden = self
            .encoder
            .forward(&self.embed(input_ids)?, &key_mask, ctx)?;
        Ok(Encoded { hidden, key_mask })
    }

    /// Runs the decoder on `decoder_input_ids` following what `cache` holds and returns the logits
    /// `[b, q, vocab]`; the cache is extended.
    pub fn decode(
        &self,
        decoder_input_ids: &[Vec<u32>],
        encoded: &Encoded,
        cache: &mut DecoderCache,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, q) = rectangle(decoder_input_ids, "decoder_input_ids")?;
        if b != encoded.hidden.dim(0)? {
            return Err(EngineError::Input(format!(
                "{b} decoder rows for {} encoder rows",
                encoded.hidden.dim(0)?
            )));
        }
        if let Some(max) = self.config.max_positions.filter(|&m| cache.len + q > m) {
            return Err(EngineError::Input(format!(
                "the decoder sequence reaches {} tokens; config.json n_positions allows {max}",
                cache.len + q
            )));
        }
        let embedded = self.embed(decoder_input_ids)?;
        let mut h =
            self.decoder
                .forward(&embedded, &encoded.hidden, &encoded.key_mask, cache, ctx)?;
        if self.config.tie_word_embeddings {
            h = (h * (self.config.d_model as f64).powf(-0.5))?;
        }
        self.lm_head.forward(&h, ctx)
    }

    /// Logits `[b, q, vocab]` of a whole encoder-decoder pass (no cache), as
    /// `T5ForConditionalGeneration`.
    pub fn forward(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: Option<&[Vec<u32>]>,
        decoder_input_ids: &[Vec<u32>],
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let encoded = self.encode(input_ids, attention_mask, ctx)?;
        self.decode(
            decoder_input_ids,
            &encoded,
            &mut DecoderCache::default(),
            ctx,
        )
    }

    /// Summed decoder cross-entropy of `labels` (rows of one length, `-100` = ignored), with the
    /// decoder input made as Hugging Face does: the start token, then the labels shifted right
    /// (-100 read as pad).
    pub fn labels_loss(
        &self,
        input_ids: &[Vec<u32>],
        attention_mask: Option<&[Vec<u32>]>,
        labels: &[Vec<i64>],
        ctx: &ForwardCtx,
    ) -> Result<LossOutput> {
        let (b, q) = rectangle(labels, "labels")?;
        let vocab = self.config.vocab_size as i64;
        let decoder_input: Vec<Vec<u32>> = labels
            .iter()
            .map(|row| {
                let mut ids = Vec::with_capacity(q);
                ids.push(self.config.decoder_start_token_id);
                for &label in &row[..q.saturating_sub(1)] {
                    ids.push(match label {
                        IGNORE => self.config.pad_token_id,
                        l if (0..vocab).contains(&l) => l as u32,
                        l => {
                            return Err(EngineError::Input(format!(
                                "label {l} is neither -100 nor a token id below {vocab}"
                            )));
                        }
                    });
                }
                Ok(ids)
            })
            .collect::<Result<_>>()?;
        let logits = self.forward(input_ids, attention_mask, &decoder_input, ctx)?;
        let flat_labels: Vec<i64> = labels.iter().flatten().copied().collect();
        let (loss_sum, tokens) = ops::cross_entropy_sum(
            &logits.reshape((b * q, self.config.vocab_size))?,
            &flat_labels,
        )?;
        Ok(LossOutput { loss_sum, tokens })
    }
}

/// Rows and columns of a batch of equal-length rows.
fn rectangle<T>(rows: &[Vec<T>], what: &str) -> Result<(usize, usize)> {
    let Some(first) = rows.first() else {
        return Err(EngineError::Input(format!("{what}: the batch is empty")));
    };
    if let Some((i, row)) = rows
        .iter()
        .enumerate()
        .find(|(_, r)| r.len() != first.len())
    {
        return Err(EngineError::Input(format!(
            "{what}: row {i} has {} entries, row 0 has {}",
            row.len(),
            first.len()
        )));
    }
    Ok((rows.len(), first.len()))
}

/// Right-pads `rows` with `pad` to the longest; returns the padded rows and their 0/1 mask.
fn pad_right<T: Copy>(rows: &[Vec<T>], pad: T) -> (Vec<Vec<T>>, Vec<Vec<u32>>) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let mut padded = r.clone();
            padded.resize(width, pad);
            let mut mask = vec![1u32; r.len()];
            mask.resize(width, 0);
            (padded, mask)
        })
        .unzip()
}

/// Decoding state of a batch: the encoder output and mask, and the decoder cache.
#[derive(Debug)]
pub struct T5DecodeState {
    pub encoded: Encoded,
    pub cache: DecoderCache,
    rows: usize,
}

impl DecodeState for T5DecodeState {
    fn select(&mut self, rows: &[usize]) -> Result<()> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.rows) {
            return Err(EngineError::Input(format!(
                "row {bad} selected from a decoding state of {} rows",
                self.rows
            )));
        }
        let index: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let index = Tensor::from_vec(index, rows.len(), &Device::Cpu)?;
        self.encoded.hidden = self.encoded.hidden.index_select(&index, 0)?;
        self.encoded.key_mask = self.encoded.key_mask.index_select(&index, 0)?;
        self.cache.select(&index)?;
        self.rows = rows.len();
        Ok(())
    }

    fn rows(&self) -> usize {
        self.rows
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl model::Decoder for T5Model {
    fn architecture(&self) -> Architecture {
        Architecture::EncoderDecoder
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        self.config.max_positions
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    fn start(&self, prompts: &[Vec<u32>]) -> Result<(Box<dyn DecodeState>, Tensor)> {
        if let Some(i) = prompts.iter().position(Vec::is_empty) {
            return Err(EngineError::Input(format!("prompt {i} is empty")));
        }
        let ctx = ForwardCtx::eval();
        let (input_ids, attention_mask) = pad_right(prompts, self.config.pad_token_id);
        let encoded = self.encode(&input_ids, Some(&attention_mask), &ctx)?;
        let mut cache = DecoderCache::default();
        let start = vec![vec![self.config.decoder_start_token_id]; prompts.len()];
        let logits = self.decode(&start, &encoded, &mut cache, &ctx)?;
        let state = T5DecodeState {
            encoded,
            cache,
            rows: prompts.len(),
        };
        Ok((Box::new(state), logits.squeeze(1)?))
    }

    fn step(&self, state: &mut dyn DecodeState, tokens: &[u32]) -> Result<Tensor> {
        let Some(state) = state.as_any_mut().downcast_mut::<T5DecodeState>() else {
            return Err(EngineError::Input(
                "the decoding state is not a T5 state".into(),
            ));
        };
        if tokens.len() != state.rows {
            return Err(EngineError::Input(format!(
                "{} tokens fed to a decoding state of {} rows",
                tokens.len(),
                state.rows
            )));
        }
        let ids: Vec<Vec<u32>> = tokens.iter().map(|&t| vec![t]).collect();
        let logits = self.decode(&ids, &state.encoded, &mut state.cache, &ForwardCtx::eval())?;
        Ok(logits.squeeze(1)?)
    }
}

impl LanguageModel for T5Model {
    fn base_name(&self) -> &str {
        &self.base_name
    }

    fn peft_task_type(&self) -> &'static str {
        "SEQ_2_SEQ_LM"
    }

    fn linears(&self) -> Vec<&LoraLinear> {
        let mut all = self.encoder.linears();
        all.extend(self.decoder.linears());
        all
    }

    fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        let mut all = self.encoder.linears_mut();
        all.extend(self.decoder.linears_mut());
        all
    }

    /// The prompt is the encoder input and never part of the loss, so both masks give the decoder
    /// cross-entropy of the target (padding is always ignored).
    fn loss(
        &self,
        batch: &[TrainExample],
        _mask: LossMask,
        ctx: &ForwardCtx,
    ) -> Result<LossOutput> {
        if batch.is_empty() {
            return Err(EngineError::Input("empty training batch".into()));
        }
        let prompts: Vec<Vec<u32>> = batch.iter().map(|e| e.prompt.clone()).collect();
        let (input_ids, attention_mask) = pad_right(&prompts, self.config.pad_token_id);
        let targets: Vec<Vec<i64>> = batch
            .iter()
            .map(|e| {
                let mut t: Vec<i64> = e.target.iter().map(|&id| i64::from(id)).collect();
                if t.is_empty() {
                    t.push(IGNORE);
                }
                t
            })
            .collect();
        let (labels, _) = pad_right(&targets, IGNORE);
        self.labels_loss(&input_ids, Some(&attention_mask), &labels, ctx)
    }
}
