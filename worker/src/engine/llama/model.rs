//! The LLaMA decoder: token embedding, blocks of (RMSNorm, causal GQA attention with RoPE and a KV cache,
//! RMSNorm, SwiGLU MLP), final norm and a tied or untied LM head; every linear is a `LoraLinear`.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, IndexOp, Tensor};
use tandem_experiments::manifest::LossMask;

use super::config::LlamaConfig;
use super::weights::WeightStore;
use crate::engine::error::{EngineError, Result};
use crate::engine::fused;
use crate::engine::lora::{ForwardCtx, LoraLinear};
use crate::engine::model::{
    Architecture, DecodeState, Decoder, LanguageModel, LossOutput, SpecialTokens, TrainExample,
};
use crate::engine::ops::{self, DenseWeight, WeightSource};

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    pub input_norm: Tensor,
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub post_norm: Tensor,
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

/// A LLaMA-architecture causal language model.
#[derive(Debug)]
pub struct Llama {
    pub config: LlamaConfig,
    name: String,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Arc<dyn WeightSource>,
    inv_freq: Vec<f32>,
    special: SpecialTokens,
}

/// Keys and values of one layer: `[rows, kv_heads, len, head_dim]`.
struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// Decoding state: per-layer KV caches and the left padding of each row.
pub struct LlamaState {
    layers: Vec<Option<LayerCache>>,
    /// Left-padding columns of each row.
    pad: Vec<usize>,
    /// Columns held in the cache (padding included).
    len: usize,
}

impl DecodeState for LlamaState {
    fn select(&mut self, rows: &[usize]) -> Result<()> {
        if rows.iter().copied().eq(0..self.pad.len()) {
            return Ok(());
        }
        let idx = Tensor::new(
            rows.iter()
                .map(|&r| r as u32)
                .collect::<Vec<_>>()
                .as_slice(),
            &Device::Cpu,
        )?;
        for layer in self.layers.iter_mut().flatten() {
            layer.k = layer.k.index_select(&idx, 0)?;
            layer.v = layer.v.index_select(&idx, 0)?;
        }
        self.pad = rows.iter().map(|&r| self.pad[r]).collect();
        Ok(())
    }

    fn rows(&self) -> usize {
        self.pad.len()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Large negative additive mask value (finite, so fully masked rows stay finite).
const MASKED: f32 = -1e30;

impl Llama {
    /// Builds the model from a weight store (Hugging Face names).
    pub fn load(config: LlamaConfig, store: &mut dyn WeightStore, name: &str) -> Result<Self> {
        let c = &config;
        let hid = c.hidden_size;
        let embed = store.get("model.embed_tokens.weight", &[c.vocab_size, hid])?;
        let mut blocks = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut linears = Vec::with_capacity(7);
            for (module, out, inp) in c.projections() {
                let path = format!("{p}.{module}");
                let w = store.get(&format!("{path}.weight"), &[out, inp])?;
                linears.push(LoraLinear::dense(path, w)?);
            }
            let [
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                gate_proj,
                up_proj,
                down_proj,
            ]: [LoraLinear; 7] = linears.try_into().expect("seven projections");
            blocks.push(Block {
                input_norm: store.get(&format!("{p}.input_layernorm.weight"), &[hid])?,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                post_norm: store.get(&format!("{p}.post_attention_layernorm.weight"), &[hid])?,
                gate_proj,
                up_proj,
                down_proj,
            });
        }
        let norm = store.get("model.norm.weight", &[hid])?;
        let lm_head: Arc<dyn WeightSource> =
            if c.tie_word_embeddings || !store.contains("lm_head.weight") {
                Arc::new(DenseWeight(embed.clone()))
            } else {
                Arc::new(DenseWeight(
                    store.get("lm_head.weight", &[c.vocab_size, hid])?,
                ))
            };
        let special = c.special_tokens();
        let inv_freq = c.inv_freq();
        Ok(Self {
            config,
            name: name.to_string(),
            embed,
            blocks,
            norm,
            lm_head,
            inv_freq,
            special,
        })
    }

    /// The decoder blocks.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// Mutable decoder blocks (QLoRA quantisation replaces their weights).
    pub fn blocks_mut(&mut self) -> &mut [Block] {
        &mut self.blocks
    }

    /// Bytes held by the frozen weights (embedding, norms, linears; a tied head counted once).
    pub fn frozen_bytes(&self) -> usize {
        let mut total = self.embed.elem_count() * 4 + self.norm.elem_count() * 4;
        for b in &self.blocks {
            total += (b.input_norm.elem_count() + b.post_norm.elem_count()) * 4;
            for l in [
                &b.q_proj,
                &b.k_proj,
                &b.v_proj,
                &b.o_proj,
                &b.gate_proj,
                &b.up_proj,
                &b.down_proj,
            ] {
                total += l.base_bytes();
            }
        }
        if !self.config.tie_word_embeddings {
            total += self.embed.elem_count() * 4;
        }
        total
    }

    /// cos and sin tables `[rows, t, head_dim / 2]` (row-major) for absolute positions `positions[row][i]`.
    fn rope_tables(&self, positions: &[Vec<u32>]) -> (Arc<Vec<f32>>, Arc<Vec<f32>>) {
        let (rows, t, half) = (positions.len(), positions[0].len(), self.inv_freq.len());
        let mut cos = Vec::with_capacity(rows * t * half);
        let mut sin = Vec::with_capacity(rows * t * half);
        for row in positions {
            for &p in row {
                for &f in &self.inv_freq {
                    let angle = p as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        (Arc::new(cos), Arc::new(sin))
    }

    /// Runs the blocks over `ids` (`[rows, t]`) at `positions`, with an optional additive mask
    /// `[rows, 1, 1, t, s]` and KV caches; returns the final hidden states before the last norm.
    fn run_blocks(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        mask: Option<&Tensor>,
        mut cache: Option<&mut Vec<Option<LayerCache>>>,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (rows, t) = ids.dims2()?;
        let c = &self.config;
        let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let rep = h / kvh;
        let (cos, sin) = self.rope_tables(positions);
        // The additive mask as the values the fused softmax reads, once for every layer.
        let mask = match mask {
            Some(m) => Some(Arc::new(m.flatten_all()?.to_vec1::<f32>()?)),
            None => None,
        };
        let mut x =
            self.embed
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((rows, t, c.hidden_size))?;
        let scale = 1.0 / (d as f64).sqrt();
        for (li, b) in self.blocks.iter().enumerate() {
            let residual = x.clone();
            let hx = fused::rms_norm(&x, &b.input_norm, c.rms_norm_eps)?;
            let q = b.q_proj.forward(&hx, ctx)?;
            let k = b.k_proj.forward(&hx, ctx)?;
            let v = b.v_proj.forward(&hx, ctx)?;
            let attn =
                match cache.as_deref_mut() {
                    // Whole sequences (training, scoring): one fused op.
                    None => {
                        let shape = fused::AttentionShape {
                            rows,
                            t,
                            heads: h,
                            kv_heads: kvh,
                            d,
                        };
                        fused::attention(&q, &k, &v, shape, scale, &cos, &sin, mask.as_ref())?
                    }
                    Some(cache) => {
                        let q = q.reshape((rows, t, h, d))?.transpose(1, 2)?.contiguous()?;
                        let k = k
                            .reshape((rows, t, kvh, d))?
                            .transpose(1, 2)?
                            .contiguous()?;
                        let v = v
                            .reshape((rows, t, kvh, d))?
                            .transpose(1, 2)?
                            .contiguous()?;
                        let q = fused::rope(&q, &cos, &sin)?;
                        let mut k = fused::rope(&k, &cos, &sin)?;
                        let mut v = v;
                        if let Some(prev) = &cache[li] {
                            k = Tensor::cat(&[&prev.k, &k], 2)?;
                            v = Tensor::cat(&[&prev.v, &v], 2)?;
                        }
                        cache[li] = Some(LayerCache {
                            k: k.clone(),
                            v: v.clone(),
                        });
                        let s = k.dim(2)?;
                        // Grouped-query attention without copying K/V: the `rep` query heads of one KV head share rows.
                        let qg = q.reshape((rows, kvh, rep * t, d))?;
                        let scores = qg.matmul(&k.t()?)?.reshape((rows, kvh * rep, t, s))?;
                        let probs = fused::masked_softmax(&scores, scale, mask.as_ref())?
                            .reshape((rows, kvh, rep * t, s))?;
                        probs
                            .matmul(&v)?
                            .reshape((rows, h, t, d))?
                            .transpose(1, 2)?
                            .reshape((rows, t, h * d))?
                    }
                };
            let x1 = (residual + b.o_proj.forward(&attn, ctx)?)?;
            let hx = fused::rms_norm(&x1, &b.post_norm, c.rms_norm_eps)?;
            let gate = b.gate_proj.forward(&hx, ctx)?;
            let up = b.up_proj.forward(&hx, ctx)?;
            x = (x1 + b.down_proj.forward(&fused::swiglu(&gate, &up)?, ctx)?)?;
        }
        Ok(x)
    }

    /// Logits `[n, vocab]` of hidden rows `[n, hidden]`.
    fn head(&self, hidden: &Tensor) -> Result<Tensor> {
        let normed = fused::rms_norm(hidden, &self.norm, self.config.rms_norm_eps)?;
        ops::frozen_matmul(&normed, &self.lm_head)
    }

    /// Logits `[t, vocab]` at every position of one sequence (no cache).
    pub fn sequence_logits(&self, tokens: &[u32]) -> Result<Tensor> {
        self.check_length(tokens.len())?;
        let ids = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let positions = vec![(0..tokens.len() as u32).collect::<Vec<_>>()];
        let mask = causal_mask(&[0], tokens.len(), 0)?;
        let hidden = self.run_blocks(&ids, &positions, mask.as_ref(), None, &ForwardCtx::eval())?;
        self.head(&hidden.squeeze(0)?)
    }

    fn check_length(&self, len: usize) -> Result<()> {
        if len > self.config.max_position_embeddings {
            return Err(EngineError::Input(format!(
                "a sequence of {len} tokens is longer than the model's context (max_position_embeddings = {})",
                self.config.max_position_embeddings
            )));
        }
        if len == 0 {
            return Err(EngineError::Input("empty token sequence".into()));
        }
        Ok(())
    }

    /// Feeds `ids` (`[rows, t]`) through the model with the cache in `state`; logits of each row's last column.
    fn decode_chunk(&self, state: &mut LlamaState, ids: Tensor) -> Result<Tensor> {
        let (rows, t) = ids.dims2()?;
        let past = state.len;
        self.check_length(past + t)?;
        let positions: Vec<Vec<u32>> = state
            .pad
            .iter()
            .map(|&p| {
                (past..past + t)
                    .map(|col| col.saturating_sub(p) as u32)
                    .collect()
            })
            .collect();
        let mask = causal_mask(&state.pad, t, past)?;
        let hidden = self.run_blocks(
            &ids,
            &positions,
            mask.as_ref(),
            Some(&mut state.layers),
            &ForwardCtx::eval(),
        )?;
        state.len += t;
        let last = hidden
            .i((.., t - 1, ..))?
            .reshape((rows, self.config.hidden_size))?;
        self.head(&last)
    }
}

/// Additive mask `[rows, 1, 1, t, past + t]`: causal, and the left padding of each row masked. `None` when
/// nothing needs masking (one new token and no padding).
fn causal_mask(pad: &[usize], t: usize, past: usize) -> Result<Option<Tensor>> {
    if t == 1 && pad.iter().all(|&p| p == 0) {
        return Ok(None);
    }
    let s = past + t;
    let mut m = Vec::with_capacity(pad.len() * t * s);
    for &p in pad {
        for i in 0..t {
            for j in 0..s {
                let visible = j <= past + i && j >= p;
                m.push(if visible { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Some(Tensor::from_vec(
        m,
        (pad.len(), 1, 1, t, s),
        &Device::Cpu,
    )?))
}

impl Decoder for Llama {
    fn architecture(&self) -> Architecture {
        Architecture::DecoderOnly
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }

    fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    fn start(&self, prompts: &[Vec<u32>]) -> Result<(Box<dyn DecodeState>, Tensor)> {
        check_prompts(prompts)?;
        let (ids, pad, longest) = left_pad(prompts, pad_id(&self.special));
        let mut state = LlamaState {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            pad,
            len: 0,
        };
        let ids = Tensor::from_vec(ids, (prompts.len(), longest), &Device::Cpu)?;
        let logits = self.decode_chunk(&mut state, ids)?;
        Ok((Box::new(state), logits))
    }

    fn step(&self, state: &mut dyn DecodeState, tokens: &[u32]) -> Result<Tensor> {
        let state = state
            .as_any_mut()
            .downcast_mut::<LlamaState>()
            .ok_or_else(|| {
                EngineError::Input("decode state does not belong to a LLaMA model".into())
            })?;
        check_step(tokens, state.pad.len())?;
        let ids = Tensor::from_vec(tokens.to_vec(), (tokens.len(), 1), &Device::Cpu)?;
        self.decode_chunk(state, ids)
    }
}

impl LanguageModel for Llama {
    fn base_name(&self) -> &str {
        &self.name
    }

    fn peft_task_type(&self) -> &'static str {
        "CAUSAL_LM"
    }

    fn linears(&self) -> Vec<&LoraLinear> {
        self.blocks
            .iter()
            .flat_map(|b| {
                [
                    &b.q_proj,
                    &b.k_proj,
                    &b.v_proj,
                    &b.o_proj,
                    &b.gate_proj,
                    &b.up_proj,
                    &b.down_proj,
                ]
            })
            .collect()
    }

    fn frozen_head_mut(&mut self) -> Option<&mut Arc<dyn WeightSource>> {
        Some(&mut self.lm_head)
    }

    fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                [
                    &mut b.q_proj,
                    &mut b.k_proj,
                    &mut b.v_proj,
                    &mut b.o_proj,
                    &mut b.gate_proj,
                    &mut b.up_proj,
                    &mut b.down_proj,
                ]
            })
            .collect()
    }

    fn loss(&self, batch: &[TrainExample], mask: LossMask, ctx: &ForwardCtx) -> Result<LossOutput> {
        if batch.is_empty() {
            return Err(EngineError::Input("empty training batch".into()));
        }
        let PackedBatch { ids, labels, t } = pack_batch(batch, mask, pad_id(&self.special));
        self.check_length(t)?;
        let ids = Tensor::from_vec(ids, (batch.len(), t), &Device::Cpu)?;
        let positions = vec![(0..t as u32).collect::<Vec<_>>(); batch.len()];
        let causal = causal_mask(&vec![0; batch.len()], t, 0)?;
        let hidden = self.run_blocks(&ids, &positions, causal.as_ref(), None, ctx)?;
        let flat = hidden.reshape((batch.len() * t, self.config.hidden_size))?;
        let keep: Vec<u32> = (0..labels.len() as u32)
            .filter(|&i| labels[i as usize] >= 0)
            .collect();
        if keep.is_empty() {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), DType::F32, &Device::Cpu)?,
                tokens: 0,
            });
        }
        let kept_labels: Vec<i64> = keep.iter().map(|&i| labels[i as usize]).collect();
        let rows = flat.index_select(&Tensor::new(keep.as_slice(), &Device::Cpu)?, 0)?;
        let logits = self.head(&rows)?;
        let (loss_sum, tokens) = fused::cross_entropy_sum(&logits, &kept_labels)?;
        Ok(LossOutput { loss_sum, tokens })
    }
}

/// The token that pads sequences: the model's pad token, else its first EOS, else 0.
pub fn pad_id(special: &SpecialTokens) -> u32 {
    special
        .pad
        .or_else(|| special.eos.first().copied())
        .unwrap_or(0)
}

/// A training batch of a decoder-only model, right-padded to its longest sequence.
pub struct PackedBatch {
    /// `rows x t` token ids (prompt, target, padding).
    pub ids: Vec<u32>,
    /// `rows x t` labels: position `i` predicts token `i + 1`; `-100` where nothing is learned.
    pub labels: Vec<i64>,
    pub t: usize,
}

/// Packs `batch` as every decoder-only engine trains on it: prompt and target in one sequence, right padding
/// never learned, prompt tokens learned only with `LossMask::Pad`.
pub fn pack_batch(batch: &[TrainExample], mask: LossMask, pad_id: u32) -> PackedBatch {
    let t = batch
        .iter()
        .map(|e| e.prompt.len() + e.target.len())
        .max()
        .unwrap_or(0);
    let mut ids = Vec::with_capacity(batch.len() * t);
    let mut labels = Vec::with_capacity(batch.len() * t);
    for e in batch {
        let seq = [e.prompt.as_slice(), e.target.as_slice()].concat();
        ids.extend(
            seq.iter()
                .copied()
                .chain(std::iter::repeat_n(pad_id, t - seq.len())),
        );
        for i in 0..t {
            let next = i + 1;
            let counted = next < seq.len() && (mask == LossMask::Pad || next >= e.prompt.len());
            labels.push(if counted { i64::from(seq[next]) } else { -100 });
        }
    }
    PackedBatch { ids, labels, t }
}

/// Refuses an empty prompt list or an empty prompt.
pub fn check_prompts(prompts: &[Vec<u32>]) -> Result<()> {
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(EngineError::Input(
            "generation needs at least one non-empty prompt".into(),
        ));
    }
    Ok(())
}

/// Refuses a decoding step whose token count is not the state's row count.
pub fn check_step(tokens: &[u32], rows: usize) -> Result<()> {
    if tokens.len() != rows {
        return Err(EngineError::Input(format!(
            "{} tokens for {rows} rows",
            tokens.len()
        )));
    }
    Ok(())
}

/// Prompts left-padded to the longest: `rows x longest` ids, each row's padding, and `longest`.
pub fn left_pad(prompts: &[Vec<u32>], pad_id: u32) -> (Vec<u32>, Vec<usize>, usize) {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut pad = Vec::with_capacity(prompts.len());
    for p in prompts {
        pad.push(longest - p.len());
        ids.extend(std::iter::repeat_n(pad_id, longest - p.len()).chain(p.iter().copied()));
    }
    (ids, pad, longest)
}

/// What adapters record as their base model (`base_model_name_or_path`), as PEFT users expect: the model's id
/// when the checkpoint names it (a Hugging Face folder's `config.json` `_name_or_path`; a GGUF's
/// `general.source.huggingface.repository`, see `gguf::source_id`), else its folder or file name.
pub fn base_name(path: &Path) -> String {
    config_model_id(path).unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    })
}

/// Whether `name` reads as a Hugging Face model id (`org/name` or `name`), not a file-system path.
pub fn is_model_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    !name.is_empty()
        && parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// The model id a Hugging Face folder's `config.json` records in `_name_or_path`, when it is an id.
fn config_model_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    let id = config.get("_name_or_path")?.as_str()?.trim();
    is_model_id(id).then(|| id.to_string())
}
