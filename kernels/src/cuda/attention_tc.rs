//! Tensor-core flash attention on the GPU (`kernels/cuda/attention_tc.cu`): causal GQA with bf16 q, k, v, out and
//! dout (raw `u16` bits), an fp32 log-sum-exp per query row, fp32 accumulation, every product on mma.sync
//! m16n8k16. The forward writes bf16 out; the deterministic backward (no atomics: delta = dout . out, then dK/dV
//! per key tile, unsplit or balanced in chunks with a fixed-order reduce, then dQ per query tile) writes fp32 dq,
//! dk, dv. Head sizes: multiples of 16 up to 128. Same
//! layout as the fp32 kernels of [`super::attention`]; checked against `crate::ops::attention` by the GPU parity
//! test `tests/gpu_attention_tc_parity.rs`.

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::ATTENTION_TC;
use super::device::{Gpu, cuda_err, i32_of, need};
use crate::error::KernelError;
use crate::ops::attention::AttentionDims;

/// Threads per block (`TC_THREADS` in attention_tc.cu): 4 warps of 16 query rows each.
const THREADS: u32 = 128;
/// Query rows per block and keys per shared-memory tile (`TC_TILE`).
const TILE: usize = 64;
/// bf16 elements of padding per shared-memory row (`TC_PAD`).
const PAD: usize = 8;
/// The largest head size the kernels take.
pub const MAX_HEAD_DIM: usize = 128;
/// Iterations (query tiles of 32 of one q head) per work item of the balanced dK/dV kernel (`TC_CHUNK` in
/// attention_tc.cu). 32 keeps the longest block at 32 iterations (at T = 2048, 32/8 heads: 144 work items per kv
/// head, where the unsplit kernel's first key tile runs 256) with 2 x 64 x D floats of partials per work item; 16
/// would tighten the balance by 16 iterations but double the partials' traffic (kernels/README.md, a prediction).
pub const DKDV_CHUNK: usize = 32;
/// Threads per block of the balanced dK/dV's reduce.
const REDUCE_THREADS: u32 = 256;

/// The compiled head-size bound for `head_dim`: 64 or 128.
fn dmax_for(head_dim: usize) -> usize {
    if head_dim <= 64 { 64 } else { 128 }
}

/// The tiled kernels (the delta and reduce kernels use no dynamic shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Forward,
    BackwardDkDv,
    BackwardDkDvChunk,
    BackwardDq,
}

impl Kernel {
    /// The compiled variant for head sizes up to `dmax` (64 or 128).
    fn name(self, dmax: usize) -> String {
        let stem = match self {
            Kernel::Forward => "flash_attention_tc_forward",
            Kernel::BackwardDkDv => "flash_attention_tc_backward_dkdv",
            Kernel::BackwardDkDvChunk => "flash_attention_tc_backward_dkdv_chunk",
            Kernel::BackwardDq => "flash_attention_tc_backward_dq",
        };
        format!("{stem}_d{dmax}")
    }

    /// Dynamic shared memory in bytes; the formulas of attention_tc.cu (shared rows of `dmax + 8` bf16).
    fn shared_bytes(self, dmax: usize) -> usize {
        let row = (dmax + PAD) * 2;
        match self {
            // Two stages of a K and a V tile of 64 rows.
            Kernel::Forward => 2 * 2 * TILE * row,
            // K and V of 64 rows, two stages of a Q and a dO tile of 32 rows, two stages of 32 lse + 32 delta.
            // (The chunked kernel runs the same body.)
            Kernel::BackwardDkDv | Kernel::BackwardDkDvChunk => {
                (2 * TILE + 2 * 2 * 32) * row + 2 * 64 * 4
            }
            // Two stages of a K and a V tile of 32 rows.
            Kernel::BackwardDq => 2 * 2 * 32 * row,
        }
    }

    /// Blocks along the grid's y axis: q heads, except for dK/dV (one block per kv head).
    fn heads(self, d: &AttentionDims) -> usize {
        match self {
            Kernel::BackwardDkDv | Kernel::BackwardDkDvChunk => d.kv_heads,
            Kernel::Forward | Kernel::BackwardDq => d.q_heads,
        }
    }

    /// Blocks along the grid's x axis: tiles of 64 rows, except for the chunked dK/dV (one block per work item).
    fn blocks_x(self, d: &AttentionDims) -> usize {
        match self {
            Kernel::BackwardDkDvChunk => dkdv_work_items(d),
            Kernel::Forward | Kernel::BackwardDkDv | Kernel::BackwardDq => d.tokens.div_ceil(TILE),
        }
    }
}

/// The dK/dV kernel a backward runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkDvKernel {
    /// One block per (key tile, kv head, sequence) over the tile's whole iteration space; writes dk, dv directly.
    Unsplit,
    /// One block per chunk of at most [`DKDV_CHUNK`] iterations of a key tile, writing fp32 partials, then a
    /// reduce summing each key row's partials in chunk order. Needs [`dkdv_partials_len`] floats of scratch.
    Balanced,
}

impl DkDvKernel {
    /// The rule of [`backward`] and [`backward_balanced`]: balanced when some key tile has more than one chunk,
    /// i.e. when the first (longest) tile has more than [`DKDV_CHUNK`] iterations; unsplit otherwise, where the
    /// balanced kernel would run the same blocks plus a reduce. It depends on the sizes alone, so the result's
    /// bits do not depend on the device.
    pub fn choose(d: &AttentionDims) -> DkDvKernel {
        if dkdv_chunks(d, 0) > 1 {
            DkDvKernel::Balanced
        } else {
            DkDvKernel::Unsplit
        }
    }
}

/// Iterations of key tile `kt` (of 64 keys) in the dK/dV kernels: the query tiles of 32 from its first key on,
/// times the q heads of a group. 0 for a tile past the sequence.
pub fn dkdv_iterations(d: &AttentionDims, kt: usize) -> usize {
    let queries = d.tokens.saturating_sub(kt * TILE);
    (d.q_heads / d.kv_heads.max(1)) * queries.div_ceil(32)
}

/// Chunks (work items of the balanced dK/dV) of key tile `kt`: its iterations in pieces of [`DKDV_CHUNK`].
pub fn dkdv_chunks(d: &AttentionDims, kt: usize) -> usize {
    dkdv_iterations(d, kt).div_ceil(DKDV_CHUNK)
}

/// Work items of the balanced dK/dV per (kv head, sequence): the chunks of every key tile.
pub fn dkdv_work_items(d: &AttentionDims) -> usize {
    (0..d.tokens.div_ceil(TILE))
        .map(|kt| dkdv_chunks(d, kt))
        .sum()
}

/// fp32 scratch of the balanced dK/dV in floats: a 64 x head_dim partial of dK and one of dV per work item, kv
/// head and sequence. 0 where [`DkDvKernel::choose`] picks the unsplit kernel.
pub fn dkdv_partials_len(d: &AttentionDims) -> usize {
    match DkDvKernel::choose(d) {
        DkDvKernel::Unsplit => 0,
        DkDvKernel::Balanced => balanced_partials_len(d),
    }
}

/// The balanced kernel's scratch in floats, whether or not the rule picks it.
pub fn balanced_partials_len(d: &AttentionDims) -> usize {
    2 * d.batch * d.kv_heads * dkdv_work_items(d) * TILE * d.head_dim
}

/// Dynamic shared memory of the forward in bytes for `head_dim`.
pub fn forward_shared_bytes(head_dim: usize) -> usize {
    Kernel::Forward.shared_bytes(dmax_for(head_dim))
}

/// Checks the sizes the kernels accept; the error names the field and what is accepted.
pub fn check_dims(d: &AttentionDims) -> Result<(), KernelError> {
    let bad = |what: &'static str, detail: String| Err(KernelError::invalid(what, detail));
    if d.batch == 0 || d.tokens == 0 || d.q_heads == 0 || d.kv_heads == 0 {
        return bad(
            "attention dims",
            format!("{d:?}: batch, tokens, q_heads and kv_heads must be >= 1"),
        );
    }
    if !d.q_heads.is_multiple_of(d.kv_heads) {
        return bad(
            "kv_heads",
            format!(
                "{} does not divide q_heads = {} (grouped-query attention needs whole groups)",
                d.kv_heads, d.q_heads
            ),
        );
    }
    if d.head_dim == 0 || !d.head_dim.is_multiple_of(16) || d.head_dim > MAX_HEAD_DIM {
        return bad(
            "head_dim",
            format!(
                "{} is not accepted by the tensor-core attention: a multiple of 16 from 16 to \
                 {MAX_HEAD_DIM} (16, 32, ..., 128); the fp32 kernels (cuda::attention) take any size up to 128",
                d.head_dim
            ),
        );
    }
    if d.batch > 65_535 || d.q_heads > 65_535 {
        return bad(
            "attention dims",
            format!("{d:?}: batch and q_heads at most 65535 (grid limits)"),
        );
    }
    Ok(())
}

/// Loads `kernel` for `d` with its dynamic shared memory allowed, and its launch configuration.
fn prepare(
    gpu: &Gpu,
    kernel: Kernel,
    d: &AttentionDims,
) -> Result<(cudarc::driver::CudaFunction, LaunchConfig), KernelError> {
    let dmax = dmax_for(d.head_dim);
    let name = kernel.name(dmax);
    if gpu.arch() < 80 {
        return Err(KernelError::CudaUnavailable(format!(
            "{name} needs sm_80 or newer (bf16 mma.sync, ldmatrix, cp.async); {} is sm_{}",
            gpu.name(),
            gpu.arch()
        )));
    }
    let bytes = kernel.shared_bytes(dmax);
    let limit = gpu
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("query shared memory per block"))?;
    if bytes > limit.max(0) as usize {
        return Err(KernelError::CudaUnavailable(format!(
            "{name} needs {bytes} bytes of shared memory per block; {} allows {limit}",
            gpu.name()
        )));
    }
    let f = gpu.function(&ATTENTION_TC, &name)?;
    // cuFuncSetAttribute wants the context current on this thread (the module may have been loaded on another).
    gpu.context()
        .bind_to_thread()
        .map_err(cuda_err("bind the CUDA context"))?;
    f.set_attribute(
        CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(cuda_err(format!(
        "allow {bytes} bytes of shared memory for {name}"
    )))?;
    let blocks_x = u32::try_from(kernel.blocks_x(d))
        .ok()
        .filter(|&x| x <= i32::MAX as u32)
        .ok_or_else(|| {
            KernelError::invalid(
                "attention dims",
                format!("{d:?}: too many blocks for {name} (grid x limit 2^31 - 1)"),
            )
        })?;
    let cfg = LaunchConfig {
        grid_dim: (blocks_x, kernel.heads(d) as u32, d.batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    Ok((f, cfg))
}

/// The scalar arguments every tiled kernel takes: T, Hq, Hkv, D.
fn scalars(d: &AttentionDims) -> Result<[i32; 4], KernelError> {
    Ok([
        i32_of(d.tokens, "tokens")?,
        i32_of(d.q_heads, "q_heads")?,
        i32_of(d.kv_heads, "kv_heads")?,
        i32_of(d.head_dim, "head_dim")?,
    ])
}

/// Causal GQA attention forward in bf16: `q` is `batch x tokens x q_heads x head_dim`, `k` and `v` are
/// `batch x tokens x kv_heads x head_dim` (bf16 bits); writes `out` (bf16, shaped like q) and one fp32
/// log-sum-exp of the scaled scores per query row (`(b * tokens + t) * q_heads + h`). Deterministic.
pub fn forward(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    out: &mut CudaSlice<u16>,
    lse: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_dims(&d)?;
    let rows = d.batch * d.tokens * d.q_heads;
    let kv = d.batch * d.tokens * d.kv_heads * d.head_dim;
    need("q", q, rows * d.head_dim)?;
    need("k", k, kv)?;
    need("v", v, kv)?;
    need("out", out, rows * d.head_dim)?;
    need("lse", lse, rows)?;
    let [t, hq, hkv, hd] = scalars(&d)?;

    let (f, cfg) = prepare(gpu, Kernel::Forward, &d)?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(&t).arg(&hq).arg(&hkv).arg(&hd);
    b.arg(out).arg(lse);
    // SAFETY: the arguments match flash_attention_tc_forward_d* in attention_tc.cu, the buffer sizes were checked
    // above and the dynamic shared memory is the kernel's own formula.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_tc_forward"))?;
    Ok(())
}

/// Causal GQA attention backward from bf16 q, k, v, the forward's bf16 `out` and fp32 `lse`, and the bf16 output
/// gradient `dout`: writes fp32 `dq` (shaped like q), `dk` and `dv` (shaped like k). Deterministic (no atomics;
/// every sum in a fixed order). The dK/dV kernel is [`DkDvKernel::choose`]'s. Allocates one float per query row
/// and the balanced dK/dV's partials ([`dkdv_partials_len`]) as scratch; use [`backward_balanced`] to reuse them.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    out: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<u16>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_dims(&d)?;
    let mut delta = gpu.zeros::<f32>(d.batch * d.tokens * d.q_heads)?;
    let mut partials = gpu.zeros::<f32>(dkdv_partials_len(&d).max(1))?;
    backward_balanced(
        gpu,
        d,
        q,
        k,
        v,
        out,
        lse,
        dout,
        &mut delta,
        &mut partials,
        dq,
        dk,
        dv,
    )
}

/// [`backward`] with the unsplit dK/dV kernel and a caller-owned scratch `delta` of at least
/// `batch * tokens * q_heads` floats.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_scratch(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    out: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    backward_with_kernel(
        gpu,
        d,
        DkDvKernel::Unsplit,
        q,
        k,
        v,
        out,
        lse,
        dout,
        delta,
        None,
        dq,
        dk,
        dv,
    )
}

/// [`backward`] with caller-owned scratch: `delta` of at least `batch * tokens * q_heads` floats and `partials` of
/// at least [`dkdv_partials_len`] floats (unused, of any length, where the rule picks the unsplit kernel).
#[allow(clippy::too_many_arguments)]
pub fn backward_balanced(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    out: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    partials: &mut CudaSlice<f32>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_dims(&d)?;
    let kernel = DkDvKernel::choose(&d);
    backward_with_kernel(
        gpu,
        d,
        kernel,
        q,
        k,
        v,
        out,
        lse,
        dout,
        delta,
        Some(partials),
        dq,
        dk,
        dv,
    )
}

/// The backward with the dK/dV kernel named by the caller (the tests run the balanced one on every shape).
/// `partials` (at least [`balanced_partials_len`] floats) is needed for [`DkDvKernel::Balanced`] only.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_kernel(
    gpu: &Gpu,
    d: AttentionDims,
    dkdv: DkDvKernel,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    out: &CudaSlice<u16>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<u16>,
    delta: &mut CudaSlice<f32>,
    partials: Option<&mut CudaSlice<f32>>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_dims(&d)?;
    let rows = d.batch * d.tokens * d.q_heads;
    let kv = d.batch * d.tokens * d.kv_heads * d.head_dim;
    need("q", q, rows * d.head_dim)?;
    need("k", k, kv)?;
    need("v", v, kv)?;
    need("out", out, rows * d.head_dim)?;
    need("lse", lse, rows)?;
    need("dout", dout, rows * d.head_dim)?;
    need("delta", delta, rows)?;
    need("dq", dq, rows * d.head_dim)?;
    need("dk", dk, kv)?;
    need("dv", dv, kv)?;
    let partials = match dkdv {
        DkDvKernel::Unsplit => None,
        DkDvKernel::Balanced => {
            let p = partials.ok_or_else(|| {
                KernelError::invalid(
                    "partials",
                    format!(
                        "the balanced dK/dV needs {} floats of scratch; none was given",
                        balanced_partials_len(&d)
                    ),
                )
            })?;
            need("partials", p, balanced_partials_len(&d))?;
            Some(p)
        }
    };
    let [t, hq, hkv, hd] = scalars(&d)?;
    // The tiled kernels are checked (architecture, shared memory, grid) before anything is launched.
    let dkdv_kernel = match dkdv {
        DkDvKernel::Unsplit => Kernel::BackwardDkDv,
        DkDvKernel::Balanced => Kernel::BackwardDkDvChunk,
    };
    let (f_dkdv, cfg_dkdv) = prepare(gpu, dkdv_kernel, &d)?;
    let (f_dq, cfg_dq) = prepare(gpu, Kernel::BackwardDq, &d)?;

    // 1. delta = dout . out, one warp per row (8 rows per block of 256 threads).
    let rows64 = rows as i64;
    let f = gpu.function(&ATTENTION_TC, "flash_attention_tc_delta")?;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(8) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(dout).arg(&rows64).arg(&hd).arg(&mut *delta);
    // SAFETY: the arguments match flash_attention_tc_delta; out, dout and delta were checked above.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_tc_delta"))?;

    // 2. dK, dV per key tile, or per chunk of a key tile and then the reduce.
    match partials {
        None => {
            let mut b = gpu.stream().launch_builder(&f_dkdv);
            b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&*delta);
            b.arg(&t)
                .arg(&hq)
                .arg(&hkv)
                .arg(&hd)
                .arg(&mut *dk)
                .arg(&mut *dv);
            // SAFETY: the arguments match flash_attention_tc_backward_dkdv_d*; sizes checked above.
            unsafe { b.launch(cfg_dkdv) }
                .map_err(cuda_err("launch flash_attention_tc_backward_dkdv"))?;
        }
        Some(p) => {
            let items = cfg_dkdv.grid_dim.0 as i32;
            let mut b = gpu.stream().launch_builder(&f_dkdv);
            b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&*delta);
            b.arg(&t).arg(&hq).arg(&hkv).arg(&hd).arg(&mut *p);
            // SAFETY: the arguments match flash_attention_tc_backward_dkdv_chunk_d*; the grid's x is the work
            // item count the kernel indexes the partials by, and partials holds balanced_partials_len floats.
            unsafe { b.launch(cfg_dkdv) }
                .map_err(cuda_err("launch flash_attention_tc_backward_dkdv_chunk"))?;
            let f = gpu.function(&ATTENTION_TC, "flash_attention_tc_backward_dkdv_reduce")?;
            let cfg = LaunchConfig {
                grid_dim: (
                    d.tokens.div_ceil(TILE) as u32,
                    d.kv_heads as u32,
                    d.batch as u32,
                ),
                block_dim: (REDUCE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.stream().launch_builder(&f);
            b.arg(&*p).arg(&t).arg(&hq).arg(&hkv).arg(&hd).arg(&items);
            b.arg(&mut *dk).arg(&mut *dv);
            // SAFETY: the arguments match flash_attention_tc_backward_dkdv_reduce; the same items and grid z
            // (batch) as the chunk kernel, so it reads exactly the partials that kernel wrote.
            unsafe { b.launch(cfg) }
                .map_err(cuda_err("launch flash_attention_tc_backward_dkdv_reduce"))?;
        }
    }

    // 3. dQ per query tile.
    let mut b = gpu.stream().launch_builder(&f_dq);
    b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&*delta);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&hd).arg(dq);
    // SAFETY: the arguments match flash_attention_tc_backward_dq_d*; sizes checked above.
    unsafe { b.launch(cfg_dq) }.map_err(cuda_err("launch flash_attention_tc_backward_dq"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dims(tokens: usize, q_heads: usize, kv_heads: usize, head_dim: usize) -> AttentionDims {
        AttentionDims {
            batch: 1,
            tokens,
            q_heads,
            kv_heads,
            head_dim,
        }
    }

    #[test]
    fn shared_memory_is_the_kernels_formula_and_fits_a100_and_h100() {
        // The formulas of attention_tc.cu, as the emulator checker (tools/emu/attention_tc_check.cpp) launches them.
        for (k, dmax, bytes) in [
            (Kernel::Forward, 128, 69_632),
            (Kernel::Forward, 64, 36_864),
            (Kernel::BackwardDkDv, 128, 70_144),
            (Kernel::BackwardDkDv, 64, 37_376),
            (Kernel::BackwardDkDvChunk, 128, 70_144),
            (Kernel::BackwardDkDvChunk, 64, 37_376),
            (Kernel::BackwardDq, 128, 34_816),
            (Kernel::BackwardDq, 64, 18_432),
        ] {
            assert_eq!(k.shared_bytes(dmax), bytes, "{}", k.name(dmax));
            // Two blocks fit an A100 SM (164 KiB, 1 KiB reserved per block), three an H100 SM (228 KiB).
            assert!(2 * (bytes + 1024) <= 167_936, "{}", k.name(dmax));
            assert!(3 * (bytes + 1024) <= 233_472, "{}", k.name(dmax));
        }
        assert_eq!(forward_shared_bytes(16), 36_864);
        assert_eq!(forward_shared_bytes(80), 69_632);
    }

    #[test]
    fn head_sizes_pick_the_smallest_variant() {
        for (hd, dmax) in [(16, 64), (64, 64), (80, 128), (96, 128), (128, 128)] {
            assert_eq!(dmax_for(hd), dmax, "head_dim {hd}");
            assert!(check_dims(&dims(37, 4, 2, hd)).is_ok(), "head_dim {hd}");
        }
        assert_eq!(Kernel::Forward.name(64), "flash_attention_tc_forward_d64");
        assert_eq!(
            Kernel::BackwardDkDv.name(128),
            "flash_attention_tc_backward_dkdv_d128"
        );
        let d = dims(37, 8, 2, 64);
        assert_eq!(Kernel::BackwardDkDv.heads(&d), 2);
        assert_eq!(Kernel::BackwardDq.heads(&d), 8);
    }

    #[test]
    fn balanced_dkdv_work_is_counted_per_key_tile() {
        // T = 2048, 32/8 heads: key tile kt has 4 x (64 - 2 kt) iterations, 8 - kt / 4 chunks of 32.
        let d = dims(2048, 32, 8, 128);
        assert_eq!(dkdv_iterations(&d, 0), 256);
        assert_eq!(dkdv_iterations(&d, 31), 8);
        assert_eq!(dkdv_iterations(&d, 32), 0);
        assert_eq!(dkdv_chunks(&d, 0), 8);
        assert_eq!(dkdv_chunks(&d, 31), 1);
        assert_eq!(dkdv_work_items(&d), 144);
        assert_eq!(DkDvKernel::choose(&d), DkDvKernel::Balanced);
        // 2 (dK, dV) x 8 kv heads x 144 items x 64 rows x 128 = 18,874,368 floats (75.5 MB).
        assert_eq!(dkdv_partials_len(&d), 18_874_368);
        let mut two = d;
        two.batch = 2;
        assert_eq!(dkdv_partials_len(&two), 2 * 18_874_368);
        // The emulator's split shapes (tools/emu/attention_tc_check.cpp): T = 300 at 4/1 heads splits key tile 0
        // only (40 iterations: 32 + 8); T = 520 at 4/1 splits tile 0 into 3 (68 iterations).
        let d = dims(300, 4, 1, 64);
        let chunks: Vec<usize> = (0..5).map(|kt| dkdv_chunks(&d, kt)).collect();
        assert_eq!(chunks, [2, 1, 1, 1, 1]);
        assert_eq!(dkdv_work_items(&d), 6);
        assert_eq!(dkdv_partials_len(&d), 2 * 6 * 64 * 64);
        assert_eq!(dkdv_chunks(&dims(520, 4, 1, 16), 0), 3);
        assert_eq!(dkdv_work_items(&dims(200, 8, 1, 32)), 6);
    }

    #[test]
    fn the_balanced_kernel_is_chosen_by_the_sizes_alone() {
        // One chunk per key tile wherever the first tile has at most 32 iterations: the unsplit kernel, no scratch.
        for d in [
            dims(256, 32, 8, 128),
            dims(1, 32, 8, 64),
            dims(130, 6, 2, 128),
            dims(1024, 1, 1, 64),
        ] {
            assert_eq!(DkDvKernel::choose(&d), DkDvKernel::Unsplit, "{d:?}");
            assert_eq!(dkdv_partials_len(&d), 0, "{d:?}");
            assert_eq!(dkdv_work_items(&d), d.tokens.div_ceil(TILE), "{d:?}");
            assert!(balanced_partials_len(&d) > 0, "{d:?}");
        }
        for d in [
            dims(257, 32, 8, 128),
            dims(300, 4, 1, 64),
            dims(1025, 1, 1, 64),
        ] {
            assert_eq!(DkDvKernel::choose(&d), DkDvKernel::Balanced, "{d:?}");
            assert_eq!(dkdv_partials_len(&d), balanced_partials_len(&d), "{d:?}");
        }
        // Every key tile's chunks cover its iterations exactly: all but the last are full.
        for d in [
            dims(2048, 32, 8, 128),
            dims(777, 12, 4, 64),
            dims(65, 2, 1, 16),
        ] {
            for kt in 0..d.tokens.div_ceil(TILE) {
                let (it, c) = (dkdv_iterations(&d, kt), dkdv_chunks(&d, kt));
                assert!(
                    it > 0 && c * DKDV_CHUNK >= it && (c - 1) * DKDV_CHUNK < it,
                    "{d:?} {kt}"
                );
            }
        }
        assert_eq!(Kernel::BackwardDkDvChunk.blocks_x(&dims(300, 4, 1, 64)), 6);
        assert_eq!(Kernel::BackwardDkDv.blocks_x(&dims(300, 4, 1, 64)), 5);
        assert_eq!(
            Kernel::BackwardDkDvChunk.name(64),
            "flash_attention_tc_backward_dkdv_chunk_d64"
        );
    }

    #[test]
    fn bad_dims_are_refused_naming_the_field() {
        for (bad, field) in [
            (dims(8, 4, 2, 0), "head_dim"),
            (dims(8, 4, 2, 8), "head_dim"),
            (dims(8, 4, 2, 72), "head_dim"),
            (dims(8, 4, 2, 144), "head_dim"),
            (dims(8, 4, 3, 64), "kv_heads"),
            (dims(0, 4, 2, 64), "attention dims"),
            (dims(8, 0, 1, 64), "attention dims"),
            (dims(8, 70_000, 1, 64), "attention dims"),
        ] {
            let err = check_dims(&bad).unwrap_err().to_string();
            assert!(err.contains(field), "{bad:?}: {err}");
        }
        let err = check_dims(&dims(8, 4, 2, 72)).unwrap_err().to_string();
        assert!(err.contains("multiple of 16"), "{err}");
    }
}
