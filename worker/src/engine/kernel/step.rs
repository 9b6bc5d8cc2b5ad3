//! The training step of the kernel engine, written out by hand: the forward pass keeps only each block's
//! input (activation checkpointing, as the thesis's gradient checkpointing), the backward pass recomputes one
//! block at a time and runs its gradient through the device's operations, and the loss over the vocabulary is
//! taken in chunks of rows, so the logits of every token never exist at once.

use tandem_experiments::manifest::LossMask;
use tandem_kernels::dropout;
use tandem_kernels::ops::attention::AttentionDims;

use super::device::Device;
use super::model::{Block, KernelLlama, Linear};
use crate::engine::error::{EngineError, Result};
use crate::engine::llama::model::{PackedBatch, pack_batch, pad_id};
use crate::engine::lora::ForwardCtx;
use crate::engine::model::TrainExample;
use crate::engine::train::trainable::add_into;

/// Logit values one chunk of the loss may hold (rows per chunk = this / vocab): 64 MiB of f32.
pub const LOSS_CHUNK_VALUES: usize = 1 << 24;

/// What one micro-batch gives the training loop.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutput {
    /// `loss_sum * scale`: the micro-batch's share of the update's mean loss.
    pub loss: f64,
    /// Target tokens counted.
    pub tokens: usize,
    /// Gradients of `loss`, `[A, B]` per adapter layer in model order.
    pub grads: Vec<Vec<f32>>,
}

/// The sizes and positions of one packed batch.
struct Pass<'a> {
    rows: usize,
    t: usize,
    positions: Vec<u32>,
    ctx: &'a ForwardCtx,
}

/// A linear layer's forward result and what its backward needs.
struct LinearOut<D: Device> {
    y: D::Buf,
    h: Option<D::Buf>,
    mask: Option<D::Mask>,
}

/// The intermediate values of one block's forward pass.
struct BlockActs<D: Device> {
    h1: D::Buf,
    rstd1: D::Buf,
    q: LinearOut<D>,
    k: LinearOut<D>,
    v: LinearOut<D>,
    qr: D::Buf,
    kr: D::Buf,
    attn: D::Buf,
    o: LinearOut<D>,
    x1: D::Buf,
    h2: D::Buf,
    rstd2: D::Buf,
    gate: LinearOut<D>,
    up: LinearOut<D>,
    act: D::Buf,
    down: LinearOut<D>,
}

impl<D: Device> KernelLlama<D> {
    fn attention_dims(&self, pass: &Pass<'_>) -> AttentionDims {
        let c = &self.config;
        AttentionDims {
            batch: pass.rows,
            tokens: pass.t,
            q_heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        }
    }

    /// A linear layer's forward, drawing its dropout mask when training with an adapter.
    fn linear_fwd(
        &self,
        l: &Linear<D>,
        x: &D::Buf,
        tokens: usize,
        ctx: &ForwardCtx,
    ) -> Result<LinearOut<D>> {
        let dev = &self.device;
        let mask = match &l.adapter {
            Some(ad) if ctx.training && ad.dropout > 0.0 => {
                let (layer, site) = l.stream;
                let stream = dropout::training_stream(ctx.step, ctx.micro, layer, site)
                    .map_err(|e| EngineError::Input(format!("{}: LoRA dropout: {e}", l.path)))?;
                Some(dev.keep_mask(ctx.seed, stream, tokens * l.in_features, ad.dropout)?)
            }
            _ => None,
        };
        let (y, h) = dev.linear(
            l.dims(tokens),
            x,
            &l.weight,
            l.adapter.as_ref(),
            mask.as_ref(),
        )?;
        Ok(LinearOut { y, h, mask })
    }

    /// The backward of [`KernelLlama::linear_fwd`]: `dx`, with the adapter's gradients added into `grads`
    /// at `slot` (its `[A, B]` pair).
    #[allow(clippy::too_many_arguments)]
    fn linear_bwd(
        &self,
        l: &Linear<D>,
        x: &D::Buf,
        out: &LinearOut<D>,
        dy: &D::Buf,
        tokens: usize,
        slot: &mut usize,
        grads: &mut [Vec<f32>],
    ) -> Result<D::Buf> {
        let dev = &self.device;
        let (dx, g) = dev.linear_backward(
            l.dims(tokens),
            x,
            &l.weight,
            l.adapter.as_ref(),
            out.mask.as_ref(),
            out.h.as_ref(),
            dy,
        )?;
        if let Some(g) = g {
            // Slots count down: the backward visits adapters in reverse model order.
            *slot -= 2;
            add_into(&mut grads[*slot], &dev.download(&g.da)?);
            add_into(&mut grads[*slot + 1], &dev.download(&g.db)?);
        }
        Ok(dx)
    }

    /// One block's forward over `x` (`rows * t x hidden`): its output, and its intermediates when `keep`.
    fn block_fwd(
        &self,
        b: &Block<D>,
        x: &D::Buf,
        pass: &Pass<'_>,
        keep: bool,
    ) -> Result<(D::Buf, Option<BlockActs<D>>)> {
        let dev = &self.device;
        let c = &self.config;
        let n = pass.rows * pass.t;
        let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (h1, rstd1) = dev.rmsnorm(x, n, c.hidden_size, &b.input_norm, c.rms_norm_eps as f32)?;
        let q = self.linear_fwd(&b.q_proj, &h1, n, pass.ctx)?;
        let k = self.linear_fwd(&b.k_proj, &h1, n, pass.ctx)?;
        let v = self.linear_fwd(&b.v_proj, &h1, n, pass.ctx)?;
        let qr = dev.rope(&q.y, n, h, d, &pass.positions, &self.inv_freq, 1.0)?;
        let kr = dev.rope(&k.y, n, kvh, d, &pass.positions, &self.inv_freq, 1.0)?;
        let attn = dev.attention(self.attention_dims(pass), &qr, &kr, &v.y)?;
        let o = self.linear_fwd(&b.o_proj, &attn, n, pass.ctx)?;
        let x1 = dev.add(x, &o.y)?;
        let (h2, rstd2) =
            dev.rmsnorm(&x1, n, c.hidden_size, &b.post_norm, c.rms_norm_eps as f32)?;
        let gate = self.linear_fwd(&b.gate_proj, &h2, n, pass.ctx)?;
        let up = self.linear_fwd(&b.up_proj, &h2, n, pass.ctx)?;
        let act = dev.swiglu(&gate.y, &up.y)?;
        let down = self.linear_fwd(&b.down_proj, &act, n, pass.ctx)?;
        let out = dev.add(&x1, &down.y)?;
        let acts = keep.then_some(BlockActs {
            h1,
            rstd1,
            q,
            k,
            v,
            qr,
            kr,
            attn,
            o,
            x1,
            h2,
            rstd2,
            gate,
            up,
            act,
            down,
        });
        Ok((out, acts))
    }

    /// One block's backward: recomputes its forward from the saved input `x`, then takes `dout` back to `dx`.
    fn block_bwd(
        &self,
        b: &Block<D>,
        x: &D::Buf,
        dout: &D::Buf,
        pass: &Pass<'_>,
        slot: &mut usize,
        grads: &mut [Vec<f32>],
    ) -> Result<D::Buf> {
        let dev = &self.device;
        let c = &self.config;
        let n = pass.rows * pass.t;
        let (h, kvh, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let (_, acts) = self.block_fwd(b, x, pass, true)?;
        let a = acts.expect("kept");
        let dact = self.linear_bwd(&b.down_proj, &a.act, &a.down, dout, n, slot, grads)?;
        let (dgate, dup) = dev.swiglu_backward(&a.gate.y, &a.up.y, &dact)?;
        let dh2_up = self.linear_bwd(&b.up_proj, &a.h2, &a.up, &dup, n, slot, grads)?;
        let dh2_gate = self.linear_bwd(&b.gate_proj, &a.h2, &a.gate, &dgate, n, slot, grads)?;
        let dh2 = dev.add(&dh2_gate, &dh2_up)?;
        let dx1_norm =
            dev.rmsnorm_backward(&a.x1, n, c.hidden_size, &b.post_norm, &a.rstd2, &dh2)?;
        let dx1 = dev.add(dout, &dx1_norm)?;
        let dattn = self.linear_bwd(&b.o_proj, &a.attn, &a.o, &dx1, n, slot, grads)?;
        let (dqr, dkr, dv) =
            dev.attention_backward(self.attention_dims(pass), &a.qr, &a.kr, &a.v.y, &dattn)?;
        let dq = dev.rope(&dqr, n, h, d, &pass.positions, &self.inv_freq, -1.0)?;
        let dk = dev.rope(&dkr, n, kvh, d, &pass.positions, &self.inv_freq, -1.0)?;
        let dh1_v = self.linear_bwd(&b.v_proj, &a.h1, &a.v, &dv, n, slot, grads)?;
        let dh1_k = self.linear_bwd(&b.k_proj, &a.h1, &a.k, &dk, n, slot, grads)?;
        let dh1_q = self.linear_bwd(&b.q_proj, &a.h1, &a.q, &dq, n, slot, grads)?;
        let dh1 = dev.add(&dev.add(&dh1_q, &dh1_k)?, &dh1_v)?;
        let dx_norm = dev.rmsnorm_backward(x, n, c.hidden_size, &b.input_norm, &a.rstd1, &dh1)?;
        dev.add(&dx1, &dx_norm)
    }

    /// Packs a batch; errors on an empty one or one longer than the model's context.
    fn pack(&self, batch: &[TrainExample], mask: LossMask) -> Result<PackedBatch> {
        if batch.is_empty() {
            return Err(EngineError::Input("empty training batch".into()));
        }
        let packed = pack_batch(batch, mask, pad_id(&self.special));
        if packed.t > self.config.max_position_embeddings {
            return Err(EngineError::Input(format!(
                "a sequence of {} tokens is longer than the model's context (max_position_embeddings = {})",
                packed.t, self.config.max_position_embeddings
            )));
        }
        Ok(packed)
    }

    /// Runs the blocks; returns the final hidden states and, when `keep_inputs`, every block's input.
    fn run_blocks(
        &self,
        ids: &[u32],
        pass: &Pass<'_>,
        keep_inputs: bool,
    ) -> Result<(D::Buf, Vec<D::Buf>)> {
        let c = &self.config;
        let mut x = self
            .device
            .embedding(&self.embed, c.vocab_size, c.hidden_size, ids)?;
        let mut inputs = Vec::new();
        for b in &self.blocks {
            let (y, _) = self.block_fwd(b, &x, pass, false)?;
            if keep_inputs {
                inputs.push(x);
            }
            x = y;
        }
        Ok((x, inputs))
    }

    /// The head's loss over the counted rows `keep` of `hidden`, in chunks; with `scale`, also the gradient of
    /// `scale * loss_sum` with respect to `hidden` (all rows; zero where nothing is counted).
    fn head_loss(
        &self,
        hidden: &D::Buf,
        total_rows: usize,
        keep: &[usize],
        targets: &[i32],
        scale: Option<f32>,
    ) -> Result<(f64, Option<D::Buf>)> {
        let dev = &self.device;
        let c = &self.config;
        let (hid, vocab) = (c.hidden_size, c.vocab_size);
        let head = self.head_weight();
        let chunk = (LOSS_CHUNK_VALUES / vocab).max(1);
        let mut loss_sum = 0f64;
        let mut dkept: Option<D::Buf> = None;
        let mut done = 0usize;
        for (rows, tg) in keep.chunks(chunk).zip(targets.chunks(chunk)) {
            let x = dev.gather_rows(hidden, hid, rows)?;
            let (normed, rstd) =
                dev.rmsnorm(&x, rows.len(), hid, &self.norm, c.rms_norm_eps as f32)?;
            let logits = dev.matmul_nt(&normed, rows.len(), head, vocab, hid)?;
            let (l, dlogits) =
                dev.cross_entropy(&logits, rows.len(), vocab, tg, scale.unwrap_or(0.0))?;
            loss_sum += l.loss_sum;
            if scale.is_some() {
                let dnormed = dev.matmul_nn(&dlogits, rows.len(), head, vocab, hid)?;
                let dx = dev.rmsnorm_backward(&x, rows.len(), hid, &self.norm, &rstd, &dnormed)?;
                dkept = Some(dev.append_seq(dkept.as_ref(), &dx, 1, done, rows.len(), hid)?);
            }
            done += rows.len();
        }
        let dhidden = match dkept {
            Some(d) => Some(dev.scatter_rows(&d, hid, keep, total_rows)?),
            None => None,
        };
        Ok((loss_sum, dhidden))
    }

    /// Summed cross-entropy of a batch's counted tokens and their count, without gradients (validation).
    pub fn loss_sum(&self, batch: &[TrainExample], mask: LossMask) -> Result<(f64, usize)> {
        let packed = self.pack(batch, mask)?;
        let ctx = ForwardCtx::eval();
        let pass = self.pass(batch.len(), packed.t, &ctx);
        let (keep, targets) = counted(&packed.labels);
        if keep.is_empty() {
            return Ok((0.0, 0));
        }
        let (hidden, _) = self.run_blocks(&packed.ids, &pass, false)?;
        let (loss, _) = self.head_loss(&hidden, pass.rows * pass.t, &keep, &targets, None)?;
        Ok((loss, keep.len()))
    }

    fn pass<'a>(&self, rows: usize, t: usize, ctx: &'a ForwardCtx) -> Pass<'a> {
        Pass {
            rows,
            t,
            positions: (0..rows).flat_map(|_| 0..t as u32).collect(),
            ctx,
        }
    }

    /// Forward and backward of one micro-batch: the loss `loss_sum / (tokens * n_micro)` (the micro-batch's
    /// share of an update's mean, as the CPU engine normalises it) and its adapter gradients. `None` when the
    /// batch counts no token.
    pub fn loss_and_grads(
        &self,
        batch: &[TrainExample],
        mask: LossMask,
        ctx: &ForwardCtx,
        n_micro: usize,
    ) -> Result<Option<StepOutput>> {
        let packed = self.pack(batch, mask)?;
        let pass = self.pass(batch.len(), packed.t, ctx);
        let (keep, targets) = counted(&packed.labels);
        if keep.is_empty() {
            return Ok(None);
        }
        let scale = 1.0 / (keep.len() * n_micro.max(1)) as f64;
        let (hidden, inputs) = self.run_blocks(&packed.ids, &pass, true)?;
        let total = pass.rows * pass.t;
        let (loss_sum, dhidden) =
            self.head_loss(&hidden, total, &keep, &targets, Some(scale as f32))?;
        let mut grads: Vec<Vec<f32>> = Vec::new();
        for l in self.linears() {
            if let Some(ad) = &l.adapter {
                grads.push(vec![0f32; self.device.len(&ad.a)]);
                grads.push(vec![0f32; self.device.len(&ad.b)]);
            }
        }
        let mut slot = grads.len();
        let mut dx = dhidden.expect("gradient asked for");
        for (b, x) in self.blocks.iter().zip(&inputs).rev() {
            dx = self.block_bwd(b, x, &dx, &pass, &mut slot, &mut grads)?;
        }
        debug_assert_eq!(slot, 0);
        Ok(Some(StepOutput {
            loss: loss_sum * scale,
            tokens: keep.len(),
            grads,
        }))
    }
}

/// The rows whose label counts, and their targets.
fn counted(labels: &[i64]) -> (Vec<usize>, Vec<i32>) {
    labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, &l)| (i, l as i32))
        .unzip()
}
