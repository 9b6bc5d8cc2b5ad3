//! The LLaMA op set on the GPU (`kernels/cuda/ops.cu`): thin launchers over device buffers, each checked against
//! `crate::ops` by the GPU parity tests. Buffers are row-major fp32 unless noted; sizes are checked here. The
//! default launchers are deterministic (same inputs, same bits); `embedding_backward_atomic` and the naive
//! attention backward are not.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::OPS;
use super::device::{Gpu, blocks_for, cuda_err, i32_of, launch_kernel, need};
use crate::error::KernelError;
use crate::ops::attention::AttentionDims;
use crate::ops::optim::AdamW;

/// Launches a kernel of `ops.cu` (arguments as in its signature; sizes checked by the caller).
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {
        launch_kernel!($gpu, &OPS, $name, $cfg, $($arg),*)
    };
}

/// One thread per item, blocks of 256, at most 2^20 blocks (the kernels loop over the rest).
pub(super) fn grid(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(items, 256).min(1 << 20), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per item, in blocks of 256 (for kernels without a grid-stride loop).
fn grid_1d(items: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(items, 256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// `out[t] = table[ids[t]]` (ids must be in range: the caller validates them, e.g. with the CPU reference).
pub fn embedding_forward(
    gpu: &Gpu,
    table: &CudaSlice<f32>,
    ids: &CudaSlice<u32>,
    tokens: usize,
    dim: usize,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("ids", ids, tokens)?;
    need("out", out, tokens * dim)?;
    let (t, d) = (tokens as i64, i32_of(dim, "dim")?);
    launch!(
        gpu,
        "embedding_forward",
        grid(tokens * dim),
        table,
        ids,
        &t,
        &d,
        out
    );
    Ok(())
}

/// Token positions grouped by id, for the deterministic embedding backward: group `g` is the id `uniq[g]` and the
/// positions `order[starts[g]..starts[g + 1]]`, ascending. Groups are in ascending id order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingGroups {
    /// The distinct ids, ascending.
    pub uniq: Vec<u32>,
    /// `uniq.len() + 1` offsets into `order`.
    pub starts: Vec<u32>,
    /// Every token position, grouped by id, ascending inside each group.
    pub order: Vec<u32>,
}

impl EmbeddingGroups {
    /// Groups `ids` (every one must be below `vocab`; at most `u32::MAX` tokens).
    pub fn new(ids: &[u32], vocab: usize) -> Result<Self, KernelError> {
        if let Some(i) = ids.iter().position(|&t| t as usize >= vocab) {
            return Err(KernelError::invalid(
                "ids",
                format!("ids[{i}] = {} is outside the vocabulary 0..{vocab}", ids[i]),
            ));
        }
        if u32::try_from(ids.len()).is_err() {
            return Err(KernelError::invalid(
                "ids",
                format!("{} tokens, at most {}", ids.len(), u32::MAX),
            ));
        }
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        // Stable: positions stay ascending inside each id.
        order.sort_by_key(|&p| ids[p as usize]);
        let (mut uniq, mut starts) = (Vec::new(), Vec::new());
        for (k, &p) in order.iter().enumerate() {
            let id = ids[p as usize];
            if uniq.last() != Some(&id) {
                uniq.push(id);
                starts.push(k as u32);
            }
        }
        starts.push(order.len() as u32);
        Ok(Self {
            uniq,
            starts,
            order,
        })
    }
}

/// `dtable (vocab x dim) = scatter-add of dy by ids`, deterministic: the host groups the token positions by id
/// ([`EmbeddingGroups`]) and one thread per (id, dimension) sums that id's rows in ascending position order.
/// `dtable` is zeroed here first.
#[allow(clippy::too_many_arguments)]
pub fn embedding_backward(
    gpu: &Gpu,
    dy: &CudaSlice<f32>,
    ids: &[u32],
    vocab: usize,
    dim: usize,
    dtable: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("dy", dy, ids.len() * dim)?;
    need("dtable", dtable, vocab * dim)?;
    let groups = EmbeddingGroups::new(ids, vocab)?;
    let d = i32_of(dim, "dim")?;
    gpu.stream()
        .memset_zeros(dtable)
        .map_err(cuda_err("zero dtable"))?;
    if groups.uniq.is_empty() || dim == 0 {
        return Ok(());
    }
    let uniq = gpu.upload(&groups.uniq)?;
    let starts = gpu.upload(&groups.starts)?;
    let order = gpu.upload(&groups.order)?;
    let cfg = LaunchConfig {
        grid_dim: (groups.uniq.len() as u32, blocks_for(dim, 256), 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "embedding_backward_grouped",
        cfg,
        dy,
        &uniq,
        &starts,
        &order,
        &d,
        dtable
    );
    Ok(())
}

/// The atomic embedding backward, for ids that are only on the device: fp32 atomics, so rows shared by several
/// tokens can differ in the last bits from run to run. `dtable` is zeroed here first.
pub fn embedding_backward_atomic(
    gpu: &Gpu,
    dy: &CudaSlice<f32>,
    ids: &CudaSlice<u32>,
    tokens: usize,
    dim: usize,
    dtable: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("dy", dy, tokens * dim)?;
    need("ids", ids, tokens)?;
    gpu.stream()
        .memset_zeros(dtable)
        .map_err(cuda_err("zero dtable"))?;
    let (t, d) = (tokens as i64, i32_of(dim, "dim")?);
    launch!(
        gpu,
        "embedding_backward_atomic",
        grid(tokens * dim),
        dy,
        ids,
        &t,
        &d,
        dtable
    );
    Ok(())
}

/// RMSNorm forward over `rows x dim`; writes `y` and `rstd` (one per row).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    eps: f32,
    y: &mut CudaSlice<f32>,
    rstd: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("x", x, rows * dim)?;
    need("y", y, rows * dim)?;
    need("rstd", rstd, rows)?;
    let d = i32_of(dim, "dim")?;
    launch!(
        gpu,
        "rmsnorm_forward",
        per_row(rows, 256),
        x,
        w,
        &d,
        &eps,
        y,
        rstd
    );
    Ok(())
}

/// Rows per chunk of the RMSNorm weight-gradient first pass (`chunks = ceil(rows / rows_per_chunk)`): fixed by
/// `rows` alone, so the summation order, and the result, is the same on every run.
pub fn rmsnorm_dw_chunking(rows: usize) -> (usize, usize) {
    let rows_per_chunk = rows.div_ceil(128).max(1);
    (rows_per_chunk, rows.div_ceil(rows_per_chunk).max(1))
}

/// RMSNorm backward: `dx` (one block per row) and `dw`, deterministic (per-chunk partial sums over rows in order,
/// then a fixed-order sum of the chunks; see [`rmsnorm_dw_chunking`]).
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rstd: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    dx: &mut CudaSlice<f32>,
    dw: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("dw", dw, dim)?;
    rmsnorm_backward_dx(gpu, x, w, rstd, dy, rows, dim, dx)?;
    if rows == 0 || dim == 0 {
        return gpu.stream().memset_zeros(dw).map_err(cuda_err("zero dw"));
    }
    let d = i32_of(dim, "dim")?;
    let (per_chunk, chunks) = rmsnorm_dw_chunking(rows);
    let mut partial = gpu.zeros::<f32>(chunks * dim)?;
    let (rows64, per64, chunks32) = (rows as i64, per_chunk as i64, i32_of(chunks, "chunks")?);
    let cfg = LaunchConfig {
        grid_dim: (blocks_for(dim, 256), chunks as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        gpu,
        "rmsnorm_dw_partial",
        cfg,
        x,
        rstd,
        dy,
        &rows64,
        &d,
        &per64,
        &mut partial
    );
    launch!(
        gpu,
        "rmsnorm_dw_reduce",
        grid_1d(dim),
        &partial,
        &chunks32,
        &d,
        dw
    );
    Ok(())
}

/// The input gradient of the RMSNorm backward alone (one block per row), for a frozen norm weight.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward_dx(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    w: &CudaSlice<f32>,
    rstd: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    rows: usize,
    dim: usize,
    dx: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("x", x, rows * dim)?;
    need("dy", dy, rows * dim)?;
    need("dx", dx, rows * dim)?;
    need("w", w, dim)?;
    need("rstd", rstd, rows)?;
    if rows == 0 || dim == 0 {
        return Ok(());
    }
    let d = i32_of(dim, "dim")?;
    launch!(
        gpu,
        "rmsnorm_backward_dx",
        per_row(rows, 256),
        x,
        w,
        rstd,
        dy,
        &d,
        dx
    );
    Ok(())
}

/// RoPE over `tokens x heads x head_dim`; `sign` 1 forward, -1 backward; `inv_freq` from `ops::rope::inv_freq`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    positions: &CudaSlice<u32>,
    inv_freq: &CudaSlice<f32>,
    tokens: usize,
    heads: usize,
    head_dim: usize,
    sign: f32,
    out: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("x", x, tokens * heads * head_dim)?;
    need("out", out, tokens * heads * head_dim)?;
    need("positions", positions, tokens)?;
    need("inv_freq", inv_freq, head_dim / 2)?;
    let (t, h, d) = (
        tokens as i64,
        i32_of(heads, "heads")?,
        i32_of(head_dim, "head_dim")?,
    );
    launch!(
        gpu,
        "rope",
        grid(tokens * heads * head_dim / 2),
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

/// SwiGLU forward over `n` elements.
pub fn swiglu_forward(
    gpu: &Gpu,
    gate: &CudaSlice<f32>,
    up: &CudaSlice<f32>,
    n: usize,
    y: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("gate", gate, n)?;
    need("up", up, n)?;
    need("y", y, n)?;
    let n64 = n as i64;
    launch!(gpu, "swiglu_forward", grid(n), gate, up, &n64, y);
    Ok(())
}

/// SwiGLU backward.
pub fn swiglu_backward(
    gpu: &Gpu,
    gate: &CudaSlice<f32>,
    up: &CudaSlice<f32>,
    dy: &CudaSlice<f32>,
    n: usize,
    dgate: &mut CudaSlice<f32>,
    dup: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("dy", dy, n)?;
    need("dgate", dgate, n)?;
    need("dup", dup, n)?;
    let n64 = n as i64;
    launch!(
        gpu,
        "swiglu_backward",
        grid(n),
        gate,
        up,
        dy,
        &n64,
        dgate,
        dup
    );
    Ok(())
}

/// Cross-entropy forward over `rows x vocab`: writes per-row `lse` and loss (0 on ignored rows); the caller sums
/// the losses and counts the rows (targets must be valid: check them with the CPU reference's rule).
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_forward(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<i32>,
    rows: usize,
    vocab: usize,
    ignore_index: i32,
    lse: &mut CudaSlice<f32>,
    row_loss: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("logits", logits, rows * vocab)?;
    need("targets", targets, rows)?;
    need("lse", lse, rows)?;
    need("row_loss", row_loss, rows)?;
    let v = i32_of(vocab, "vocab")?;
    launch!(
        gpu,
        "cross_entropy_forward",
        per_row(rows, 1024),
        logits,
        targets,
        &v,
        &ignore_index,
        lse,
        row_loss
    );
    Ok(())
}

/// Cross-entropy backward: `dlogits = (softmax - onehot) * scale`, 0 on ignored rows.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_backward(
    gpu: &Gpu,
    logits: &CudaSlice<f32>,
    targets: &CudaSlice<i32>,
    lse: &CudaSlice<f32>,
    rows: usize,
    vocab: usize,
    ignore_index: i32,
    scale: f32,
    dlogits: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    need("logits", logits, rows * vocab)?;
    need("dlogits", dlogits, rows * vocab)?;
    let v = i32_of(vocab, "vocab")?;
    launch!(
        gpu,
        "cross_entropy_backward",
        per_row(rows, 1024),
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

/// One AdamW step (`step` from 1) over `n` parameters, in place: bit for bit [`AdamW::step`].
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    gpu: &Gpu,
    opt: &AdamW,
    step: u64,
    params: &mut CudaSlice<f32>,
    grads: &CudaSlice<f32>,
    m: &mut CudaSlice<f32>,
    v: &mut CudaSlice<f32>,
    n: usize,
) -> Result<(), KernelError> {
    if step == 0 {
        return Err(KernelError::invalid("step", "AdamW steps count from 1"));
    }
    for (what, len) in [
        ("params", params.len()),
        ("grads", grads.len()),
        ("m", m.len()),
        ("v", v.len()),
    ] {
        if len < n {
            return Err(KernelError::invalid(
                what,
                format!("{len} elements, needs {n}"),
            ));
        }
    }
    let (bc1, bc2) = crate::ops::optim::bias_corrections(opt.beta1, opt.beta2, step);
    let n64 = n as i64;
    launch!(
        gpu,
        "adamw_step",
        grid(n),
        params,
        grads,
        m,
        v,
        &n64,
        &opt.lr,
        &opt.beta1,
        &opt.beta2,
        &opt.eps,
        &opt.weight_decay,
        &bc1,
        &bc2
    );
    Ok(())
}

/// The dropout keep mask of the first `n` elements of `stream` under `seed` (1 kept, 0 dropped) with probability
/// `p`, into `out`: the same bits as [`crate::dropout::keep_mask`].
pub fn dropout_keep_mask(
    gpu: &Gpu,
    seed: u64,
    stream: u64,
    p: f32,
    n: usize,
    out: &mut CudaSlice<u8>,
) -> Result<(), KernelError> {
    let threshold = crate::dropout::threshold(p)?;
    if out.len() < n {
        return Err(KernelError::invalid(
            "out",
            format!("{} bytes, the mask needs {n}", out.len()),
        ));
    }
    let n64 = n as i64;
    launch!(
        gpu,
        "dropout_keep_mask",
        grid(n.div_ceil(16)),
        &seed,
        &stream,
        &n64,
        &threshold,
        out
    );
    Ok(())
}

/// Blocks of the first sum-of-squares pass over `n` values (fixed by `n` alone, so the order is too).
pub fn sum_squares_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 1024)
}

/// The global L2 norm of several gradient buffers, deterministic: per tensor a fixed grid of blocks writes fp64
/// partial sums of squares (fixed-order tree inside each block), then one block sums every partial in order.
pub fn global_norm(gpu: &Gpu, grads: &[&CudaSlice<f32>]) -> Result<f64, KernelError> {
    let total: usize = grads.iter().map(|g| sum_squares_blocks(g.len())).sum();
    let mut partial = gpu.zeros::<f64>(total)?;
    let mut offset = 0usize;
    for g in grads {
        let blocks = sum_squares_blocks(g.len());
        let (n, off) = (g.len() as i64, offset as i64);
        let cfg = LaunchConfig {
            grid_dim: (blocks as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch!(gpu, "sum_squares_partial", cfg, *g, &n, &mut partial, &off);
        offset += blocks;
    }
    let mut out = gpu.zeros::<f64>(1)?;
    let count = total as i64;
    launch!(gpu, "sum_f64", per_row(1, 256), &partial, &count, &mut out);
    Ok(gpu.download(&out)?[0].sqrt())
}

/// Scales the gradients by `min(1, max_norm / (norm + 1e-6))` when over the limit; returns the norm before.
pub fn clip_global_norm(
    gpu: &Gpu,
    grads: &mut [&mut CudaSlice<f32>],
    max_norm: f64,
) -> Result<f64, KernelError> {
    let norm = global_norm(gpu, &grads.iter().map(|g| &**g).collect::<Vec<_>>())?;
    let factor = crate::ops::optim::clip_factor(norm, max_norm);
    if factor < 1.0 {
        for g in grads.iter_mut() {
            let len = g.len();
            let n = len as i64;
            launch!(gpu, "scale_inplace", grid(len), &mut **g, &n, &factor);
        }
    }
    Ok(norm)
}

fn attention_cfg(d: &AttentionDims) -> Result<LaunchConfig, KernelError> {
    if d.head_dim == 0
        || d.head_dim > 1024
        || d.kv_heads == 0
        || !d.q_heads.is_multiple_of(d.kv_heads)
    {
        return Err(KernelError::invalid(
            "attention dims",
            format!("{d:?}: head_dim 1..=1024, kv_heads dividing q_heads"),
        ));
    }
    let threads = d.head_dim.div_ceil(32) * 32;
    Ok(LaunchConfig {
        grid_dim: ((d.batch * d.tokens * d.q_heads) as u32, 1, 1),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Causal GQA attention forward, the naive kernel (one block per query; any head size up to 1024; the tiled
/// kernel is [`super::attention::forward`]); writes `out` (shaped like q) and one log-sum-exp per query.
pub fn attention_forward_naive(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let cfg = attention_cfg(&d)?;
    let queries = d.batch * d.tokens * d.q_heads;
    need("q", q, queries * d.head_dim)?;
    need("k", k, d.batch * d.tokens * d.kv_heads * d.head_dim)?;
    need("v", v, d.batch * d.tokens * d.kv_heads * d.head_dim)?;
    need("out", out, queries * d.head_dim)?;
    need("lse", lse, queries)?;
    let (t, hq, hkv, hd) = (
        i32_of(d.tokens, "tokens")?,
        i32_of(d.q_heads, "q_heads")?,
        i32_of(d.kv_heads, "kv_heads")?,
        i32_of(d.head_dim, "head_dim")?,
    );
    launch!(
        gpu,
        "attention_forward_naive",
        cfg,
        q,
        k,
        v,
        &t,
        &hq,
        &hkv,
        &hd,
        out,
        lse
    );
    Ok(())
}

/// Causal GQA attention backward, the naive kernel; `dk` and `dv` are zeroed here first and summed with fp32
/// atomics, so the last bits can differ from run to run (the deterministic one is [`super::attention::backward`]).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_naive(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    out: &CudaSlice<f32>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    let cfg = attention_cfg(&d)?;
    let queries = d.batch * d.tokens * d.q_heads;
    need("dout", dout, queries * d.head_dim)?;
    need("dq", dq, queries * d.head_dim)?;
    need("dk", dk, d.batch * d.tokens * d.kv_heads * d.head_dim)?;
    need("dv", dv, d.batch * d.tokens * d.kv_heads * d.head_dim)?;
    gpu.stream().memset_zeros(dk).map_err(cuda_err("zero dk"))?;
    gpu.stream().memset_zeros(dv).map_err(cuda_err("zero dv"))?;
    let (t, hq, hkv, hd) = (
        i32_of(d.tokens, "tokens")?,
        i32_of(d.q_heads, "q_heads")?,
        i32_of(d.kv_heads, "kv_heads")?,
        i32_of(d.head_dim, "head_dim")?,
    );
    launch!(
        gpu,
        "attention_backward_naive",
        cfg,
        q,
        k,
        v,
        out,
        lse,
        dout,
        &t,
        &hq,
        &hkv,
        &hd,
        dq,
        dk,
        dv
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_groups_list_positions_by_id_in_order() {
        let g = EmbeddingGroups::new(&[5, 2, 5, 0, 2, 5], 6).unwrap();
        assert_eq!(g.uniq, vec![0, 2, 5]);
        assert_eq!(g.starts, vec![0, 1, 3, 6]);
        assert_eq!(g.order, vec![3, 1, 4, 0, 2, 5]);
        let empty = EmbeddingGroups::new(&[], 3).unwrap();
        assert!(empty.uniq.is_empty() && empty.order.is_empty());
        assert_eq!(empty.starts, vec![0]);
        let err = EmbeddingGroups::new(&[1, 7], 4).unwrap_err().to_string();
        assert!(err.contains("ids[1] = 7") && err.contains("0..4"), "{err}");
    }

    #[test]
    fn reduction_layouts_depend_on_the_size_alone() {
        assert_eq!(rmsnorm_dw_chunking(1), (1, 1));
        assert_eq!(rmsnorm_dw_chunking(128), (1, 128));
        assert_eq!(rmsnorm_dw_chunking(129), (2, 65));
        assert_eq!(rmsnorm_dw_chunking(4096), (32, 128));
        for rows in [1usize, 7, 128, 1000, 4097] {
            let (per, chunks) = rmsnorm_dw_chunking(rows);
            assert!(per * chunks >= rows && per * (chunks - 1) < rows, "{rows}");
        }
        assert_eq!(sum_squares_blocks(0), 1);
        assert_eq!(sum_squares_blocks(257), 2);
        assert_eq!(sum_squares_blocks(1 << 30), 1024);
    }
}
