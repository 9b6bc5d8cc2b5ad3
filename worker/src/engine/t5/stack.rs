//! The T5 encoder and decoder stacks: pre-norm blocks of self-attention, (decoder only)
//! cross-attention over the encoder output, and a feed-forward sublayer, each added to the residual
//! stream; a final layer norm.

use candle_core::Tensor;

use super::attention::{Attention, MASKED, RelativeBias, causal_mask};
use super::config::{FeedForwardKind, T5Config};
use crate::engine::error::{EngineError, Result};
use crate::engine::llama::weights::WeightStore;
use crate::engine::lora::{ForwardCtx, LoraLinear};
use crate::engine::ops;

/// T5's layer norm: RMS over the last dimension, no mean subtraction, no bias.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    fn load(weights: &mut dyn WeightStore, name: &str, config: &T5Config) -> Result<Self> {
        let weight = weights.get(&format!("{name}.weight"), &[config.d_model])?;
        Ok(Self {
            weight,
            eps: config.layer_norm_epsilon,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// The feed-forward sublayer's linear maps.
#[derive(Debug)]
pub enum FeedForward {
    Relu {
        wi: LoraLinear,
        wo: LoraLinear,
    },
    GatedGelu {
        wi_0: LoraLinear,
        wi_1: LoraLinear,
        wo: LoraLinear,
    },
}

impl FeedForward {
    fn load(weights: &mut dyn WeightStore, prefix: &str, config: &T5Config) -> Result<Self> {
        let (d, f) = (config.d_model, config.d_ff);
        let up = |w: &mut dyn WeightStore, name: &str| linear(w, &format!("{prefix}.{name}"), f, d);
        Ok(match config.feed_forward {
            FeedForwardKind::Relu => Self::Relu {
                wi: up(weights, "wi")?,
                wo: linear(weights, &format!("{prefix}.wo"), d, f)?,
            },
            FeedForwardKind::GatedGelu => Self::GatedGelu {
                wi_0: up(weights, "wi_0")?,
                wi_1: up(weights, "wi_1")?,
                wo: linear(weights, &format!("{prefix}.wo"), d, f)?,
            },
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        match self {
            Self::Relu { wi, wo } => wo.forward(&wi.forward(x, ctx)?.relu()?, ctx),
            Self::GatedGelu { wi_0, wi_1, wo } => {
                // candle's `gelu` is the tanh approximation, Hugging Face's `gelu_new`.
                let gate = wi_0.forward(x, ctx)?.gelu()?;
                wo.forward(&(gate * wi_1.forward(x, ctx)?)?, ctx)
            }
        }
    }

    fn linears(&self) -> Vec<&LoraLinear> {
        match self {
            Self::Relu { wi, wo } => vec![wi, wo],
            Self::GatedGelu { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }

    fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        match self {
            Self::Relu { wi, wo } => vec![wi, wo],
            Self::GatedGelu { wi_0, wi_1, wo } => vec![wi_0, wi_1, wo],
        }
    }
}

fn linear(
    weights: &mut dyn WeightStore,
    path: &str,
    out_f: usize,
    in_f: usize,
) -> Result<LoraLinear> {
    LoraLinear::dense(
        path,
        weights.get(&format!("{path}.weight"), &[out_f, in_f])?,
    )
}

fn attention(weights: &mut dyn WeightStore, prefix: &str, config: &T5Config) -> Result<Attention> {
    let (d, inner) = (config.d_model, config.inner_dim());
    Ok(Attention {
        q: linear(weights, &format!("{prefix}.q"), inner, d)?,
        k: linear(weights, &format!("{prefix}.k"), inner, d)?,
        v: linear(weights, &format!("{prefix}.v"), inner, d)?,
        o: linear(weights, &format!("{prefix}.o"), d, inner)?,
        num_heads: config.num_heads,
        d_kv: config.d_kv,
    })
}

fn relative_bias(
    weights: &mut dyn WeightStore,
    prefix: &str,
    config: &T5Config,
    bidirectional: bool,
) -> Result<RelativeBias> {
    let name = format!("{prefix}.relative_attention_bias.weight");
    let weight = weights.get(
        &name,
        &[config.relative_attention_num_buckets, config.num_heads],
    )?;
    Ok(RelativeBias {
        weight,
        bidirectional,
        num_buckets: config.relative_attention_num_buckets,
        max_distance: config.relative_attention_max_distance,
    })
}

/// One encoder block (`encoder.block.{i}`).
#[derive(Debug)]
pub struct EncoderBlock {
    pub self_norm: LayerNorm,
    pub self_attention: Attention,
    pub ff_norm: LayerNorm,
    pub ff: FeedForward,
}

/// The encoder: blocks sharing the first block's bidirectional position bias, then a final norm.
#[derive(Debug)]
pub struct Encoder {
    pub blocks: Vec<EncoderBlock>,
    pub relative_bias: RelativeBias,
    pub final_norm: LayerNorm,
}

impl Encoder {
    pub fn load(weights: &mut dyn WeightStore, config: &T5Config) -> Result<Self> {
        let mut blocks = Vec::with_capacity(config.num_layers);
        for i in 0..config.num_layers {
            let p = format!("encoder.block.{i}");
            blocks.push(EncoderBlock {
                self_norm: LayerNorm::load(weights, &format!("{p}.layer.0.layer_norm"), config)?,
                self_attention: attention(weights, &format!("{p}.layer.0.SelfAttention"), config)?,
                ff_norm: LayerNorm::load(weights, &format!("{p}.layer.1.layer_norm"), config)?,
                ff: FeedForward::load(weights, &format!("{p}.layer.1.DenseReluDense"), config)?,
            });
        }
        let relative_bias = relative_bias(
            weights,
            "encoder.block.0.layer.0.SelfAttention",
            config,
            true,
        )?;
        let final_norm = LayerNorm::load(weights, "encoder.final_layer_norm", config)?;
        Ok(Self {
            blocks,
            relative_bias,
            final_norm,
        })
    }

    /// Encodes embedded tokens `[b, s, d_model]`; `key_mask` is the additive padding mask `[b, 1,
    /// 1, s]`.
    pub fn forward(
        &self,
        embedded: &Tensor,
        key_mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let s = embedded.dim(1)?;
        let bias = self.relative_bias.bias(s, s, 0)?.broadcast_add(key_mask)?;
        let mut h = embedded.clone();
        for block in &self.blocks {
            let x = block.self_norm.forward(&h)?;
            let att = &block.self_attention;
            let q = att.heads(&att.q, &x, ctx)?;
            let (k, v) = att.keys_values(&x, ctx)?;
            h = (h + att.attend(&q, &k, &v, &bias, ctx)?)?;
            h = (&h + block.ff.forward(&block.ff_norm.forward(&h)?, ctx)?)?;
        }
        self.final_norm.forward(&h)
    }

    pub fn linears(&self) -> Vec<&LoraLinear> {
        self.blocks
            .iter()
            .flat_map(|b| {
                let a = &b.self_attention;
                [&a.q, &a.k, &a.v, &a.o].into_iter().chain(b.ff.linears())
            })
            .collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                let a = &mut b.self_attention;
                [&mut a.q, &mut a.k, &mut a.v, &mut a.o]
                    .into_iter()
                    .chain(b.ff.linears_mut())
            })
            .collect()
    }
}

/// One decoder block (`decoder.block.{i}`).
#[derive(Debug)]
pub struct DecoderBlock {
    pub self_norm: LayerNorm,
    pub self_attention: Attention,
    pub cross_norm: LayerNorm,
    pub cross_attention: Attention,
    pub ff_norm: LayerNorm,
    pub ff: FeedForward,
}

/// What the decoder keeps between steps: per layer the self-attention keys/values so far and the
/// cross-attention keys/values of the encoder output (computed once), each `[b, heads, len, d_kv]`.
#[derive(Debug, Default)]
pub struct DecoderCache {
    pub self_kv: Vec<Option<(Tensor, Tensor)>>,
    pub cross_kv: Vec<Option<(Tensor, Tensor)>>,
    /// Decoder positions already processed.
    pub len: usize,
}

impl DecoderCache {
    /// Keeps rows `rows` of every cached tensor (beam reordering).
    pub fn select(&mut self, rows: &Tensor) -> Result<()> {
        for slot in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()) {
            if let Some((k, v)) = slot {
                *slot = Some((k.index_select(rows, 0)?, v.index_select(rows, 0)?));
            }
        }
        Ok(())
    }
}

/// The decoder: blocks sharing the first block's causal position bias, then a final norm.
#[derive(Debug)]
pub struct Decoder {
    pub blocks: Vec<DecoderBlock>,
    pub relative_bias: RelativeBias,
    pub final_norm: LayerNorm,
}

impl Decoder {
    pub fn load(weights: &mut dyn WeightStore, config: &T5Config) -> Result<Self> {
        let mut blocks = Vec::with_capacity(config.num_decoder_layers);
        for i in 0..config.num_decoder_layers {
            let p = format!("decoder.block.{i}");
            blocks.push(DecoderBlock {
                self_norm: LayerNorm::load(weights, &format!("{p}.layer.0.layer_norm"), config)?,
                self_attention: attention(weights, &format!("{p}.layer.0.SelfAttention"), config)?,
                cross_norm: LayerNorm::load(weights, &format!("{p}.layer.1.layer_norm"), config)?,
                cross_attention: attention(
                    weights,
                    &format!("{p}.layer.1.EncDecAttention"),
                    config,
                )?,
                ff_norm: LayerNorm::load(weights, &format!("{p}.layer.2.layer_norm"), config)?,
                ff: FeedForward::load(weights, &format!("{p}.layer.2.DenseReluDense"), config)?,
            });
        }
        let relative_bias = relative_bias(
            weights,
            "decoder.block.0.layer.0.SelfAttention",
            config,
            false,
        )?;
        let final_norm = LayerNorm::load(weights, "decoder.final_layer_norm", config)?;
        Ok(Self {
            blocks,
            relative_bias,
            final_norm,
        })
    }

    /// Decodes embedded tokens `[b, q, d_model]` that follow the `cache.len` positions already in
    /// `cache` (pass an empty cache for a whole sequence) and returns the final-normed hidden
    /// states `[b, q, d_model]`. `encoded` is the encoder output `[b, s, d_model]`; `key_mask` its
    /// additive padding mask `[b, 1, 1, s]`.
    pub fn forward(
        &self,
        embedded: &Tensor,
        encoded: &Tensor,
        key_mask: &Tensor,
        cache: &mut DecoderCache,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let q_len = embedded.dim(1)?;
        let offset = cache.len;
        let k_len = offset + q_len;
        let mut bias = self.relative_bias.bias(q_len, k_len, offset)?;
        if q_len > 1 {
            bias = bias.broadcast_add(&causal_mask(q_len, k_len, offset, embedded.device())?)?;
        }
        cache.self_kv.resize(self.blocks.len(), None);
        cache.cross_kv.resize(self.blocks.len(), None);
        let mut h = embedded.clone();
        for (i, block) in self.blocks.iter().enumerate() {
            let x = block.self_norm.forward(&h)?;
            let att = &block.self_attention;
            let q = att.heads(&att.q, &x, ctx)?;
            let (mut k, mut v) = att.keys_values(&x, ctx)?;
            if let Some((past_k, past_v)) = &cache.self_kv[i] {
                k = Tensor::cat(&[past_k, &k], 2)?;
                v = Tensor::cat(&[past_v, &v], 2)?;
            }
            h = (h + att.attend(&q, &k, &v, &bias, ctx)?)?;
            cache.self_kv[i] = Some((k, v));

            let x = block.cross_norm.forward(&h)?;
            let att = &block.cross_attention;
            let q = att.heads(&att.q, &x, ctx)?;
            let (k, v) = match &cache.cross_kv[i] {
                Some(kv) => kv.clone(),
                None => att.keys_values(encoded, ctx)?,
            };
            h = (h + att.attend(&q, &k, &v, key_mask, ctx)?)?;
            cache.cross_kv[i] = Some((k, v));

            h = (&h + block.ff.forward(&block.ff_norm.forward(&h)?, ctx)?)?;
        }
        cache.len = k_len;
        self.final_norm.forward(&h)
    }

    pub fn linears(&self) -> Vec<&LoraLinear> {
        self.blocks
            .iter()
            .flat_map(|b| {
                let (s, c) = (&b.self_attention, &b.cross_attention);
                [&s.q, &s.k, &s.v, &s.o, &c.q, &c.k, &c.v, &c.o]
                    .into_iter()
                    .chain(b.ff.linears())
            })
            .collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        self.blocks
            .iter_mut()
            .flat_map(|b| {
                let (s, c) = (&mut b.self_attention, &mut b.cross_attention);
                [
                    &mut s.q, &mut s.k, &mut s.v, &mut s.o, &mut c.q, &mut c.k, &mut c.v, &mut c.o,
                ]
                .into_iter()
                .chain(b.ff.linears_mut())
            })
            .collect()
    }
}

/// The additive key mask `[b, 1, 1, s]` of a `[b, s]` 0/1 attention mask (0 = padding).
pub fn key_mask(mask: &[Vec<u32>], device: &candle_core::Device) -> Result<Tensor> {
    let b = mask.len();
    let s = mask.first().map_or(0, Vec::len);
    let mut values = Vec::with_capacity(b * s);
    for (row, m) in mask.iter().enumerate() {
        if m.len() != s {
            return Err(EngineError::Input(format!(
                "attention_mask row {row} has {} entries, row 0 has {s}",
                m.len()
            )));
        }
        if !m.contains(&1) {
            return Err(EngineError::Input(format!(
                "attention_mask row {row} masks every token"
            )));
        }
        values.extend(m.iter().map(|&v| if v == 0 { MASKED } else { 0.0 }));
    }
    Ok(Tensor::from_vec(values, (b, 1, 1, s), device)?)
}
