//! The op-set rows of the kernel benchmark: embedding, RMSNorm, RoPE, SwiGLU, cross-entropy over the LLaMA-3.1
//! vocabulary, AdamW and the global norm over LLaMA-3.1-8B's r = 32 q/v adapters, at `tokens` tokens; next to the
//! fp32 rows, the bf16-activation versions (`super::ops_bf16`, rows marked "(bf16)"). All are
//! memory-bound, so each row gives GB/s over the bytes the op must move at least (each input read once, each
//! output written once) and the fraction of the copy ceiling. Values do not change the memory traffic, so the
//! large inputs are constants (no host-side random generation of gigabytes); ids and targets are random.

use cudarc::driver::CudaSlice;

use super::bench::{BenchOptions, BenchRow, copies_for, row, time_median};
use super::device::Gpu;
use super::ops;
use super::ops_bf16;
use crate::error::KernelError;
use crate::ops::optim::AdamW;
use crate::ops::rope::{Llama3Scaling, inv_freq};
use crate::testdata::indices;

/// LLaMA-3.1-8B sizes.
const HIDDEN: usize = 4096;
const INTERMEDIATE: usize = 14_336;
const VOCAB: usize = 128_256;
const Q_HEADS: usize = 32;
const HEAD_DIM: usize = 128;
/// Parameters of r = 32 adapters on q_proj (4096 -> 4096) and v_proj (4096 -> 1024) in 32 layers.
const ADAPTER_PARAMS: usize = 32 * (2 * 32 * 4096 + 32 * 4096 + 1024 * 32);

fn filled(gpu: &Gpu, n: usize, v: f32) -> Result<CudaSlice<f32>, KernelError> {
    gpu.upload(&vec![v; n])
}

/// A constant bf16 buffer (`v` rounded to bf16).
fn filled_bf16(gpu: &Gpu, n: usize, v: f32) -> Result<CudaSlice<u16>, KernelError> {
    gpu.upload(&vec![half::bf16::from_f32(v).to_bits(); n])
}

/// Several copies of a constant bf16 buffer, enough to overflow L2 when rotated.
fn rotated_bf16(gpu: &Gpu, n: usize, v: f32) -> Result<Vec<CudaSlice<u16>>, KernelError> {
    (0..copies_for(gpu, 2 * n))
        .map(|_| filled_bf16(gpu, n, v))
        .collect()
}

/// Several copies of a constant buffer, enough to overflow L2 when rotated.
fn rotated(gpu: &Gpu, n: usize, v: f32) -> Result<Vec<CudaSlice<f32>>, KernelError> {
    (0..copies_for(gpu, 4 * n))
        .map(|_| filled(gpu, n, v))
        .collect()
}

/// Appends the op-set rows.
pub(super) fn op_rows(
    gpu: &Gpu,
    o: &BenchOptions,
    copy_gbs: f64,
    rows: &mut Vec<BenchRow>,
) -> Result<(), KernelError> {
    let t = o.tokens;
    let f = 4usize; // bytes per fp32
    let b = 2usize; // bytes per bf16
    let mut push = |name: &str, shape: String, ms: f64, bytes: usize| {
        rows.push(row(
            name,
            shape,
            ms,
            Some(bytes as f64),
            None,
            ("copy", copy_gbs),
        ));
    };

    // Embedding: gather t rows of 4096 from the 128,256-row table; the deterministic backward zeroes the whole
    // table gradient and groups the ids on the host (both timed).
    {
        let table = gpu.zeros::<f32>(VOCAB * HIDDEN)?;
        let ids_host = indices(41, t, VOCAB as u32);
        let ids = gpu.upload(&ids_host)?;
        let mut out = gpu.zeros::<f32>(t * HIDDEN)?;
        let ms = time_median(gpu, o, |_| {
            ops::embedding_forward(gpu, &table, &ids, t, HIDDEN, &mut out)
        })?;
        push(
            "embedding_fwd",
            format!("{t} ids x {HIDDEN}"),
            ms,
            2 * t * HIDDEN * f + 4 * t,
        );
        drop(table);
        let mut dtable = gpu.zeros::<f32>(VOCAB * HIDDEN)?;
        let ms = time_median(gpu, o, |_| {
            ops::embedding_backward(gpu, &out, &ids_host, VOCAB, HIDDEN, &mut dtable)
        })?;
        push(
            "embedding_bwd (zeroes the table, host grouping)",
            format!("{t} ids x {HIDDEN}, vocab {VOCAB}"),
            ms,
            t * HIDDEN * f + VOCAB * HIDDEN * f,
        );
        drop(dtable);
        let table = gpu.zeros::<u16>(VOCAB * HIDDEN)?;
        let mut out = gpu.zeros::<u16>(t * HIDDEN)?;
        let ms = time_median(gpu, o, |_| {
            ops_bf16::embedding_forward(gpu, &table, VOCAB, &ids, t, HIDDEN, &mut out)
        })?;
        push(
            "embedding_fwd (bf16)",
            format!("{t} ids x {HIDDEN}"),
            ms,
            2 * t * HIDDEN * b + 4 * t,
        );
    }

    // RMSNorm over t x 4096.
    {
        let xs = rotated(gpu, t * HIDDEN, 0.5)?;
        let w = filled(gpu, HIDDEN, 1.0)?;
        let (mut y, mut rstd) = (gpu.zeros::<f32>(t * HIDDEN)?, gpu.zeros::<f32>(t)?);
        let n = xs.len();
        let ms = time_median(gpu, o, |i| {
            ops::rmsnorm_forward(gpu, &xs[i % n], &w, t, HIDDEN, 1e-5, &mut y, &mut rstd)
        })?;
        let shape = format!("{t} x {HIDDEN}");
        push(
            "rmsnorm_fwd",
            shape.clone(),
            ms,
            2 * t * HIDDEN * f + HIDDEN * f + t * f,
        );
        let (mut dx, mut dw) = (gpu.zeros::<f32>(t * HIDDEN)?, gpu.zeros::<f32>(HIDDEN)?);
        let ms = time_median(gpu, o, |i| {
            ops::rmsnorm_backward(gpu, &xs[i % n], &w, &rstd, &y, t, HIDDEN, &mut dx, &mut dw)
        })?;
        push(
            "rmsnorm_bwd",
            shape.clone(),
            ms,
            3 * t * HIDDEN * f + 2 * HIDDEN * f + t * f,
        );
        drop((xs, y, dx));
        let xs = rotated_bf16(gpu, t * HIDDEN, 0.5)?;
        let mut y = gpu.zeros::<u16>(t * HIDDEN)?;
        let n = xs.len();
        let ms = time_median(gpu, o, |i| {
            ops_bf16::rmsnorm_forward(gpu, &xs[i % n], &w, t, HIDDEN, 1e-5, &mut y, &mut rstd)
        })?;
        push(
            "rmsnorm_fwd (bf16)",
            shape.clone(),
            ms,
            2 * t * HIDDEN * b + HIDDEN * f + t * f,
        );
        let mut dx = gpu.zeros::<u16>(t * HIDDEN)?;
        let ms = time_median(gpu, o, |i| {
            ops_bf16::rmsnorm_backward(gpu, &xs[i % n], &w, &rstd, &y, t, HIDDEN, &mut dx, &mut dw)
        })?;
        push(
            "rmsnorm_bwd (bf16)",
            shape,
            ms,
            3 * t * HIDDEN * b + 2 * HIDDEN * f + t * f,
        );
    }

    // RoPE with Llama-3.1 scaling on the queries (t x 32 heads x 128).
    {
        let n = t * Q_HEADS * HEAD_DIM;
        let xs = rotated(gpu, n, 0.5)?;
        let pos = gpu.upload(&(0..t as u32).collect::<Vec<_>>())?;
        let freq = gpu.upload(&inv_freq(
            HEAD_DIM,
            500_000.0,
            Some(Llama3Scaling::LLAMA_3_1),
        )?)?;
        let mut out = gpu.zeros::<f32>(n)?;
        let c = xs.len();
        let ms = time_median(gpu, o, |i| {
            ops::rope(
                gpu,
                &xs[i % c],
                &pos,
                &freq,
                t,
                Q_HEADS,
                HEAD_DIM,
                1.0,
                &mut out,
            )
        })?;
        push(
            "rope (Llama-3.1 scaling)",
            format!("{t} x {Q_HEADS} heads x {HEAD_DIM}"),
            ms,
            2 * n * f + 4 * t + HEAD_DIM / 2 * f,
        );
        drop((xs, out));
        let xs = rotated_bf16(gpu, n, 0.5)?;
        let mut out = gpu.zeros::<u16>(n)?;
        let c = xs.len();
        let ms = time_median(gpu, o, |i| {
            ops_bf16::rope(
                gpu,
                &xs[i % c],
                &pos,
                &freq,
                t,
                Q_HEADS,
                HEAD_DIM,
                1.0,
                &mut out,
            )
        })?;
        push(
            "rope (bf16, Llama-3.1 scaling)",
            format!("{t} x {Q_HEADS} heads x {HEAD_DIM}"),
            ms,
            2 * n * b + 4 * t + HEAD_DIM / 2 * f,
        );
    }

    // SwiGLU over t x 14336.
    {
        let n = t * INTERMEDIATE;
        let (gate, up, dy) = (
            filled(gpu, n, 0.5)?,
            filled(gpu, n, 0.25)?,
            filled(gpu, n, 1.0)?,
        );
        let mut y = gpu.zeros::<f32>(n)?;
        let ms = time_median(gpu, o, |_| ops::swiglu_forward(gpu, &gate, &up, n, &mut y))?;
        let shape = format!("{t} x {INTERMEDIATE}");
        push("swiglu_fwd", shape.clone(), ms, 3 * n * f);
        drop(y);
        let (mut dg, mut du) = (gpu.zeros::<f32>(n)?, gpu.zeros::<f32>(n)?);
        let ms = time_median(gpu, o, |_| {
            ops::swiglu_backward(gpu, &gate, &up, &dy, n, &mut dg, &mut du)
        })?;
        push("swiglu_bwd", shape.clone(), ms, 5 * n * f);
        drop((gate, up, dy, dg, du));
        let (gate, up, dy) = (
            filled_bf16(gpu, n, 0.5)?,
            filled_bf16(gpu, n, 0.25)?,
            filled_bf16(gpu, n, 1.0)?,
        );
        let mut y = gpu.zeros::<u16>(n)?;
        let ms = time_median(gpu, o, |_| {
            ops_bf16::swiglu_forward(gpu, &gate, &up, n, &mut y)
        })?;
        push("swiglu_fwd (bf16)", shape.clone(), ms, 3 * n * b);
        let (mut dg, mut du) = (gpu.zeros::<u16>(n)?, gpu.zeros::<u16>(n)?);
        let ms = time_median(gpu, o, |_| {
            ops_bf16::swiglu_backward(gpu, &gate, &up, &dy, n, &mut dg, &mut du)
        })?;
        push("swiglu_bwd (bf16)", shape, ms, 5 * n * b);
    }

    // Cross-entropy over the 128,256-token vocabulary, 1 in 8 targets ignored.
    {
        let logits = filled(gpu, t * VOCAB, 0.01)?;
        let targets_host: Vec<i32> = indices(42, t, VOCAB as u32)
            .into_iter()
            .enumerate()
            .map(|(i, v)| if i % 8 == 7 { -100 } else { v as i32 })
            .collect();
        let targets = gpu.upload(&targets_host)?;
        let (mut lse, mut loss) = (gpu.zeros::<f32>(t)?, gpu.zeros::<f32>(t)?);
        let ms = time_median(gpu, o, |_| {
            ops::cross_entropy_forward(gpu, &logits, &targets, t, VOCAB, -100, &mut lse, &mut loss)
        })?;
        let shape = format!("{t} x {VOCAB}");
        push(
            "cross_entropy_fwd",
            shape.clone(),
            ms,
            t * VOCAB * f + 3 * t * f,
        );
        let mut dlogits = gpu.zeros::<f32>(t * VOCAB)?;
        let ms = time_median(gpu, o, |_| {
            ops::cross_entropy_backward(
                gpu,
                &logits,
                &targets,
                &lse,
                t,
                VOCAB,
                -100,
                1.0 / t as f32,
                &mut dlogits,
            )
        })?;
        push(
            "cross_entropy_bwd",
            shape.clone(),
            ms,
            2 * t * VOCAB * f + 2 * t * f,
        );
        drop((logits, dlogits));
        let logits = filled_bf16(gpu, t * VOCAB, 0.01)?;
        let ms = time_median(gpu, o, |_| {
            ops_bf16::cross_entropy_forward(
                gpu, &logits, &targets, t, VOCAB, -100, &mut lse, &mut loss,
            )
        })?;
        push(
            "cross_entropy_fwd (bf16, one pass)",
            shape.clone(),
            ms,
            t * VOCAB * b + 3 * t * f,
        );
        let mut dlogits = gpu.zeros::<u16>(t * VOCAB)?;
        let ms = time_median(gpu, o, |_| {
            ops_bf16::cross_entropy_backward(
                gpu,
                &logits,
                &targets,
                &lse,
                t,
                VOCAB,
                -100,
                1.0 / t as f32,
                &mut dlogits,
            )
        })?;
        push(
            "cross_entropy_bwd (bf16)",
            shape,
            ms,
            2 * t * VOCAB * b + 2 * t * f,
        );
    }

    // AdamW and the global norm over every adapter parameter of the model, in one buffer.
    {
        let n = ADAPTER_PARAMS;
        let mut p = filled(gpu, n, 0.01)?;
        let g = filled(gpu, n, 0.001)?;
        let (mut m, mut v) = (gpu.zeros::<f32>(n)?, gpu.zeros::<f32>(n)?);
        let opt = AdamW::torch(2e-4, 0.0);
        let shape = format!("{n} adapter parameters (r = 32, q/v, 32 layers)");
        let ms = time_median(gpu, o, |i| {
            ops::adamw_step(gpu, &opt, 1 + i as u64, &mut p, &g, &mut m, &mut v, n)
        })?;
        push("adamw_step", shape.clone(), ms, 7 * n * f);
        let ms = time_median(gpu, o, |_| ops::global_norm(gpu, &[&g]).map(|_| ()))?;
        push("global_norm (fp64, two passes)", shape, ms, n * f);
    }
    Ok(())
}
