//! The LLaMA op set with bf16 activations on the GPU (`kernels/cuda/ops_bf16.cu`): thin launchers over device
//! buffers. bf16 buffers are `CudaSlice<u16>` holding the raw bits (round to nearest even, as `half::bf16`); weights,
//! `rstd`, `lse`, losses and the RMSNorm weight gradient stay fp32, and every kernel computes in fp32 (RoPE's angles
//! in fp64, as the fp32 kernel). Sizes are checked here, each error naming the buffer or size at fault. Every
//! launcher is deterministic: no atomics, fixed summation orders (the RMSNorm weight gradient uses the fp32 op's
//! chunking, [`super::ops::rmsnorm_dw_chunking`]). Each thread handles chunks of [`CHUNK`] values, moved as one
//! 16-byte access when the buffers are 16-byte aligned and (for row-wise ops) the row length is a multiple of 8,
//! else one value at a time.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::OPS_BF16;
use super::device::{Gpu, blocks_for, cuda_err, i32_of, launch_kernel, need};
use super::ops::{grid, rmsnorm_dw_chunking};
use crate::error::KernelError;

/// Launches a kernel of `ops_bf16.cu` (arguments as in its signature; sizes checked by the caller).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {
        launch_kernel!($gpu, &OPS_BF16, $name, $cfg, $($arg),*)
    };
}

/// bf16 values per thread chunk (16 bytes).
pub const CHUNK: usize = 8;

/// Heads turned by one RoPE thread with one set of sines and cosines (`ROPE_HEADS` in `ops_bf16.cu`).
pub const ROPE_HEADS: usize = 4;

/// Threads of the RoPE kernel: one per (token, group of [`ROPE_HEADS`] heads, chunk of 8 frequencies).
pub fn rope_threads(tokens: usize, heads: usize, head_dim: usize) -> usize {
    tokens * heads.div_ceil(ROPE_HEADS) * (head_dim / 2).div_ceil(CHUNK)
}

/// The grid of the RMSNorm weight-gradient first pass: (blocks of 256 threads over the `ceil(dim / 8)` column
/// chunks, row chunks of [`rmsnorm_dw_chunking`]).
pub fn dw_partial_grid(rows: usize, dim: usize) -> (u32, u32) {
    let (_, chunks) = rmsnorm_dw_chunking(rows);
    (blocks_for(dim.div_ceil(CHUNK), 256), chunks as u32)
}

fn per_row(rows: usize, threads: u32) -> Result<LaunchConfig, KernelError> {
    let rows = u32::try_from(rows)
        .map_err(|_| KernelError::invalid("rows", format!("{rows} rows, at most {}", u32::MAX)))?;
    Ok(LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn positive(what: &'static str, v: usize) -> Result<(), KernelError> {
    if v == 0 {
        Err(KernelError::invalid(what, "0: must be at least 1"))
    } else {
        Ok(())
    }
}

/// `out[t] = table[ids[t]]` (`tokens x dim`), bf16 table and rows: an exact copy. The table is bf16 because the
/// checkpoint stores it so and LoRA fine-tuning keeps it frozen (half the memory of an fp32 copy, and the gather
/// rounds nothing). Ids must be below `vocab` (the caller validates them, e.g. with the CPU reference).
#[allow(clippy::too_many_arguments)]
pub fn embedding_forward(
    gpu: &Gpu,
    table: &CudaSlice<u16>,
    vocab: usize,
    ids: &CudaSlice<u32>,
    tokens: usize,
    dim: usize,
    out: &mut CudaSlice<u16>,
) -> Result<(), KernelError> {
    need("table", table, vocab * dim)?;
    need("ids", ids, tokens)?;
    need("out", out, tokens * dim)?;
    if tokens == 0 || dim == 0 {
        return Ok(());
    }
    let (t, d) = (tokens as i64, i32_of(dim, "dim")?);
    launch!(
        gpu,
        "embedding_forward_bf16",
        grid(tokens * dim.div_ceil(CHUNK)),
        table,
        ids,
        &t,
        &d,
        out
    );
    Ok(())
}

/// RMSNorm forward over `rows x dim`: bf16 `x` and `y`, fp32 weight `w` (`dim`) and `rstd` (one per row).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    gpu: &Gpu,
    x: &CudaSlice<u16>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    y: &mut CudaSlice<u16>,
    rstd: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    positive("dim", dim)?;
    need("x", x, rows * dim)?;
    need("w", w, dim)?;
    need("y", y, rows * dim)?;
    need("rstd", rstd, rows)?;
    if rows == 0 {
        return Ok(());
    }
    let d = i32_of(dim, "dim")?;
    launch!(
        gpu,
        "rmsnorm_forward_bf16",
        per_row(rows, 256)?,
        x,
        w,
        &d,
        &eps,
        y,
        rstd
    );
    Ok(())
}

/// RMSNorm backward: bf16 `dx` (one block per row) from bf16 `x` and `dy`, and the fp32 weight gradient `dw`,
/// deterministic with the fp32 op's chunking and order: per-chunk partial sums over rows in order, then a
/// fixed-order sum of the chunks. On the same values it is the fp32 kernel's algorithm.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    gpu: &Gpu,
    x: &CudaSlice<u16>,
    w: &CudaSlice<f32>,
    rstd: &CudaSlice<f32>,
    dy: &CudaSlice<u16>,
    rows: usize,
    dim: usize,
    dx: &mut CudaSlice<u16>,
    dw: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    positive("dim", dim)?;
    need("x", x, rows * dim)?;
    need("w", w, dim)?;
    need("rstd", rstd, rows)?;
    need("dy", dy, rows * dim)?;
    need("dx", dx, rows * dim)?;
    need("dw", dw, dim)?;
    if rows == 0 {
        return gpu.stream().memset_zeros(dw).map_err(cuda_err("zero dw"));
    }
    let d = i32_of(dim, "dim")?;
    launch!(
        gpu,
        "rmsnorm_backward_dx_bf16",
        per_row(rows, 256)?,
        x,
        w,
        rstd,
        dy,
        &d,
        dx
    );
    let (per_chunk, chunks) = rmsnorm_dw_chunking(rows);
    let mut partial = gpu.zeros::<f32>(chunks * dim)?;
    let (rows64, per64, chunks32) = (rows as i64, per_chunk as i64, i32_of(chunks, "chunks")?);
    let cfg = LaunchConfig {
        grid_dim: {
            let (bx, by) = dw_partial_grid(rows, dim);
            (bx, by, 1)
        },
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "rmsnorm_dw_partial_bf16",
        cfg,
        x,
        rstd,
        dy,
        &rows64,
        &d,
        &per64,
        &mut partial
    );
    let reduce = LaunchConfig {
        grid_dim: (blocks_for(dim, 256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "rmsnorm_dw_reduce_bf16",
        reduce,
        &partial,
        &chunks32,
        &d,
        dw
    );
    Ok(())
}

/// RoPE over bf16 `tokens x heads x head_dim`; `sign` 1 forward, -1 backward; `inv_freq` (fp32, `head_dim / 2`)
/// from `ops::rope::inv_freq`. Angles, sines and cosines in fp64, as the fp32 kernel.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &CudaSlice<u16>,
    positions: &CudaSlice<u32>,
    inv_freq: &CudaSlice<f32>,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    sign: f32,
    out: &mut CudaSlice<u16>,
) -> Result<(), KernelError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::invalid(
            "head_dim",
            format!("{head_dim}: must be even and at least 2"),
        ));
    }
    need("x", x, tokens * heads * head_dim)?;
    need("out", out, tokens * heads * head_dim)?;
    need("positions", positions, tokens)?;
    need("inv_freq", inv_freq, head_dim / 2)?;
    if tokens == 0 || heads == 0 {
        return Ok(());
    }
    let (t, h, d) = (
        tokens as i64,
        i32_of(heads, "heads")?,
        i32_of(head_dim, "head_dim")?,
    );
    launch!(
        gpu,
        "rope_bf16",
        grid(rope_threads(tokens, heads, head_dim)),
        x,
        positions,
        inv_freq,
        &t,
        &h,
        &d,
        &sign,
        out
    );
    Ok(())
}

/// SwiGLU forward over `n` bf16 elements: `y = silu(gate) * up`.
pub fn swiglu_forward(
    gpu: &Gpu,
    gate: &CudaSlice<u16>,
    up: &CudaSlice<u16>,
    n: usize,
    y: &mut CudaSlice<u16>,
) -> Result<(), KernelError> {
    need("gate", gate, n)?;
    need("up", up, n)?;
    need("y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = n as i64;
    launch!(
        gpu,
        "swiglu_forward_bf16",
        grid(n.div_ceil(CHUNK)),
        gate,
        up,
        &n64,
        y
    );
    Ok(())
}

/// SwiGLU backward over `n` bf16 elements: bf16 `dgate` and `dup`.
pub fn swiglu_backward(
    gpu: &Gpu,
    gate: &CudaSlice<u16>,
    up: &CudaSlice<u16>,
    dy: &CudaSlice<u16>,
    n: usize,
    dgate: &mut CudaSlice<u16>,
    dup: &mut CudaSlice<u16>,
) -> Result<(), KernelError> {
    need("gate", gate, n)?;
    need("up", up, n)?;
    need("dy", dy, n)?;
    need("dgate", dgate, n)?;
    need("dup", dup, n)?;
    if n == 0 {
        return Ok(());
    }
    let n64 = n as i64;
    launch!(
        gpu,
        "swiglu_backward_bf16",
        grid(n.div_ceil(CHUNK)),
        gate,
        up,
        dy,
        &n64,
        dgate,
        dup
    );
    Ok(())
}

/// Cross-entropy forward over bf16 `rows x vocab` logits: fp32 per-row `lse` and loss (0 on ignored rows), one
/// pass over the logits; the caller sums the losses and counts the rows (targets must be valid: check them with
/// the CPU reference's rule).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward(
    gpu: &Gpu,
    logits: &CudaSlice<u16>,
    targets: &CudaSlice<i32>,
    rows: usize,
    vocab: usize,
    ignore_index: i32,
    lse: &mut CudaSlice<f32>,
    row_loss: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    positive("vocab", vocab)?;
    need("logits", logits, rows * vocab)?;
    need("targets", targets, rows)?;
    need("lse", lse, rows)?;
    need("row_loss", row_loss, rows)?;
    if rows == 0 {
        return Ok(());
    }
    let v = i32_of(vocab, "vocab")?;
    launch!(
        gpu,
        "cross_entropy_forward_bf16",
        per_row(rows, 1024)?,
        logits,
        targets,
        &v,
        &ignore_index,
        lse,
        row_loss
    );
    Ok(())
}

/// Cross-entropy backward: bf16 `dlogits = (softmax - onehot) * scale` from bf16 logits and the fp32 `lse`, 0 on
/// ignored rows.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    gpu: &Gpu,
    logits: &CudaSlice<u16>,
    targets: &CudaSlice<i32>,
    lse: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    ignore_index: i32,
    scale: f32,
    dlogits: &mut CudaSlice<u16>,
) -> Result<(), KernelError> {
    positive("vocab", vocab)?;
    need("logits", logits, rows * vocab)?;
    need("targets", targets, rows)?;
    need("lse", lse, rows)?;
    need("dlogits", dlogits, rows * vocab)?;
    if rows == 0 {
        return Ok(());
    }
    let v = i32_of(vocab, "vocab")?;
    launch!(
        gpu,
        "cross_entropy_backward_bf16",
        per_row(rows, 1024)?,
        logits,
        targets,
        lse,
        &v,
        &ignore_index,
        &scale,
        dlogits
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_threads_cover_every_pair_once() {
        // LLaMA-3.1-8B queries: 2048 tokens x 8 groups of 4 heads x 8 chunks of the 64 frequencies.
        assert_eq!(rope_threads(2048, 32, 128), 2048 * 8 * 8);
        // A partial head group and a partial frequency chunk each still get a thread.
        assert_eq!(rope_threads(3, 5, 24), 3 * 2 * 2);
        assert_eq!(rope_threads(1, 1, 2), 1);
        for (t, h, d) in [
            (1usize, 1usize, 2usize),
            (7, 3, 64),
            (5, 8, 130),
            (2, 33, 18),
        ] {
            let (groups, chunks) = (h.div_ceil(ROPE_HEADS), (d / 2).div_ceil(CHUNK));
            assert!(groups * ROPE_HEADS >= h && (groups - 1) * ROPE_HEADS < h);
            assert!(chunks * CHUNK >= d / 2 && (chunks - 1) * CHUNK < d / 2);
            assert_eq!(rope_threads(t, h, d), t * groups * chunks);
        }
    }

    #[test]
    fn dw_partial_grid_uses_the_fp32_chunking() {
        // 4096 columns = 512 chunks of 8 = 2 blocks of 256; 2048 rows in the fp32 op's 128 chunks of 16.
        assert_eq!(dw_partial_grid(2048, 4096), (2, 128));
        assert_eq!(dw_partial_grid(1, 1), (1, 1));
        assert_eq!(
            dw_partial_grid(300, 72),
            (1, rmsnorm_dw_chunking(300).1 as u32)
        );
        for (rows, dim) in [(129usize, 2049usize), (7, 4097), (4096, 14336)] {
            let (bx, by) = dw_partial_grid(rows, dim);
            assert!(bx as usize * 256 * CHUNK >= dim, "{rows}x{dim}");
            assert!((bx as usize - 1) * 256 * CHUNK < dim, "{rows}x{dim}");
            assert_eq!(by as usize, rmsnorm_dw_chunking(rows).1);
        }
    }
}
