//! Generation on the kernel engine: prefill of left-padded prompts, then one token per row at a time against a
//! per-layer key/value cache on the device. It implements [`Decoder`], so greedy decoding, seeded sampling and
//! beam search are the CPU engine's own code.

use std::any::Any;
use std::sync::Arc;

use candle_core::Tensor;
use tandem_kernels::ops::attention::CachedDims;

use super::device::Device;
use super::model::KernelLlama;
use crate::engine::error::{EngineError, Result};
use crate::engine::llama::model::{check_prompts, check_step, left_pad, pad_id};
use crate::engine::model::{Architecture, DecodeState, Decoder, SpecialTokens};

/// The decoding state: each layer's keys and values (`rows x len x kv_heads * head_dim`, after RoPE), each
/// row's left padding, and the columns cached.
pub struct KernelState<D: Device> {
    device: Arc<D>,
    layers: Vec<Option<(D::Buf, D::Buf)>>,
    pad: Vec<usize>,
    len: usize,
}

impl<D: Device> DecodeState for KernelState<D> {
    fn select(&mut self, rows: &[usize]) -> Result<()> {
        if rows.iter().copied().eq(0..self.pad.len()) {
            return Ok(());
        }
        for (k, v) in self.layers.iter_mut().flatten() {
            let width = self.device.len(k) / self.pad.len();
            *k = self.device.gather_rows(k, width, rows)?;
            *v = self.device.gather_rows(v, width, rows)?;
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

impl<D: Device> KernelLlama<D> {
    /// Feeds `ids` (`rows x t`) through the model against the cache; the logits of each row's last column.
    fn decode_chunk(&self, state: &mut KernelState<D>, ids: &[u32], t: usize) -> Result<Tensor> {
        let dev = &self.device;
        let c = &self.config;
        let rows = state.pad.len();
        let past = state.len;
        if past + t > c.max_position_embeddings {
            return Err(EngineError::Input(format!(
                "a sequence of {} tokens is longer than the model's context (max_position_embeddings = {})",
                past + t,
                c.max_position_embeddings
            )));
        }
        let (h, kvh, d, hid) = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
            c.hidden_size,
        );
        let n = rows * t;
        let positions: Vec<u32> = state
            .pad
            .iter()
            .flat_map(|&p| (past..past + t).map(move |col| col.saturating_sub(p) as u32))
            .collect();
        let mut x = dev.embedding(&self.embed, c.vocab_size, hid, ids)?;
        let dims = CachedDims {
            rows,
            new: t,
            past,
            q_heads: h,
            kv_heads: kvh,
            head_dim: d,
        };
        for (b, cache) in self.blocks.iter().zip(state.layers.iter_mut()) {
            let (h1, _) = dev.rmsnorm(&x, n, hid, &b.input_norm, c.rms_norm_eps as f32)?;
            let lin = |l, input: &D::Buf| -> Result<D::Buf> {
                let l: &super::model::Linear<D> = l;
                Ok(dev
                    .linear(l.dims(n), input, &l.weight, l.adapter.as_ref(), None)?
                    .0)
            };
            let q = dev.rope(
                &lin(&b.q_proj, &h1)?,
                n,
                h,
                d,
                &positions,
                &self.inv_freq,
                1.0,
            )?;
            let k = dev.rope(
                &lin(&b.k_proj, &h1)?,
                n,
                kvh,
                d,
                &positions,
                &self.inv_freq,
                1.0,
            )?;
            let v = lin(&b.v_proj, &h1)?;
            let width = kvh * d;
            let (k_all, v_all) = match cache.take() {
                Some((pk, pv)) => (
                    dev.append_seq(Some(&pk), &k, rows, past, t, width)?,
                    dev.append_seq(Some(&pv), &v, rows, past, t, width)?,
                ),
                None => (k, v),
            };
            let attn = dev.attention_cached(dims, &state.pad, &q, &k_all, &v_all)?;
            *cache = Some((k_all, v_all));
            let x1 = dev.add(&x, &lin(&b.o_proj, &attn)?)?;
            let (h2, _) = dev.rmsnorm(&x1, n, hid, &b.post_norm, c.rms_norm_eps as f32)?;
            let act = dev.swiglu(&lin(&b.gate_proj, &h2)?, &lin(&b.up_proj, &h2)?)?;
            x = dev.add(&x1, &lin(&b.down_proj, &act)?)?;
        }
        state.len += t;
        let last: Vec<usize> = (0..rows).map(|r| r * t + t - 1).collect();
        let x = dev.gather_rows(&x, hid, &last)?;
        let (normed, _) = dev.rmsnorm(&x, rows, hid, &self.norm, c.rms_norm_eps as f32)?;
        let logits = dev.matmul_nt(&normed, rows, self.head_weight(), c.vocab_size, hid)?;
        Ok(Tensor::from_vec(
            dev.download(&logits)?,
            (rows, c.vocab_size),
            &candle_core::Device::Cpu,
        )?)
    }
}

impl<D: Device> Decoder for KernelLlama<D> {
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
        let mut state = KernelState {
            device: self.device.clone(),
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            pad,
            len: 0,
        };
        let logits = self.decode_chunk(&mut state, &ids, longest)?;
        Ok((Box::new(state), logits))
    }

    fn step(&self, state: &mut dyn DecodeState, tokens: &[u32]) -> Result<Tensor> {
        let state = state
            .as_any_mut()
            .downcast_mut::<KernelState<D>>()
            .ok_or_else(|| {
                EngineError::Input(
                    "decode state does not belong to this kernel-engine model".into(),
                )
            })?;
        check_step(tokens, state.pad.len())?;
        self.decode_chunk(state, tokens, 1)
    }
}
