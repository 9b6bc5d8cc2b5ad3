//! Tensor-core flash attention on the GPU (`kernels/cuda/attention_tc.cu`): causal GQA forward with bf16 q, k, v
//! and out (raw `u16` bits), an fp32 log-sum-exp per query row, fp32 accumulation, both products on mma.sync
//! m16n8k16. Head sizes: multiples of 16 up to 128. Same layout as the fp32 kernels of [`super::attention`];
//! checked against `crate::ops::attention` by the GPU parity test `tests/gpu_attention_tc_parity.rs`.

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::ATTENTION_TC;
use super::device::{Gpu, cuda_err};
use super::ops::{i32_of, need};
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

/// The compiled head-size bound for `head_dim`: 64 or 128.
fn dmax_for(head_dim: usize) -> usize {
    if head_dim <= 64 { 64 } else { 128 }
}

/// The forward kernel's name for head sizes up to `dmax`.
fn forward_name(dmax: usize) -> String {
    format!("flash_attention_tc_forward_d{dmax}")
}

/// Dynamic shared memory of the forward in bytes: two stages of a K and a V tile, each `64 x (dmax + 8)` bf16
/// (the formula of attention_tc.cu's header comment).
pub fn forward_shared_bytes(head_dim: usize) -> usize {
    2 * 2 * TILE * (dmax_for(head_dim) + PAD) * 2
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
    let t = i32_of(d.tokens, "tokens")?;
    let hq = i32_of(d.q_heads, "q_heads")?;
    let hkv = i32_of(d.kv_heads, "kv_heads")?;
    let hd = i32_of(d.head_dim, "head_dim")?;

    let name = forward_name(dmax_for(d.head_dim));
    let bytes = forward_shared_bytes(d.head_dim);
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
    if gpu.arch() < 80 {
        return Err(KernelError::CudaUnavailable(format!(
            "{name} needs sm_80 or newer (bf16 mma.sync, cp.async); {} is sm_{}",
            gpu.name(),
            gpu.arch()
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
    let cfg = LaunchConfig {
        grid_dim: (
            d.tokens.div_ceil(TILE) as u32,
            d.q_heads as u32,
            d.batch as u32,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(&t).arg(&hq).arg(&hkv).arg(&hd);
    b.arg(out).arg(lse);
    // SAFETY: the arguments match flash_attention_tc_forward_d* in attention_tc.cu, the buffer sizes were checked
    // above and the dynamic shared memory is the kernel's own formula.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_tc_forward"))?;
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
        // 2 stages x (K + V) x 64 rows x (DMAX + 8) bf16, as attention_tc.cu and the emulator checker compute it.
        assert_eq!(forward_shared_bytes(128), 69_632);
        assert_eq!(forward_shared_bytes(64), 36_864);
        assert_eq!(forward_shared_bytes(16), 36_864);
        assert_eq!(forward_shared_bytes(80), 69_632);
        // sm_80 allows 163 KiB per block with opt-in: two blocks of the D = 128 kernel fit an A100 SM (164 KiB,
        // 1 KiB reserved per block), three an H100 SM (228 KiB).
        assert!(2 * (forward_shared_bytes(128) + 1024) <= 167_936);
        assert!(3 * (forward_shared_bytes(128) + 1024) <= 233_472);
    }

    #[test]
    fn head_sizes_pick_the_smallest_variant() {
        for (hd, dmax) in [(16, 64), (64, 64), (80, 128), (96, 128), (128, 128)] {
            assert_eq!(dmax_for(hd), dmax, "head_dim {hd}");
            assert!(check_dims(&dims(37, 4, 2, hd)).is_ok(), "head_dim {hd}");
        }
        assert_eq!(forward_name(64), "flash_attention_tc_forward_d64");
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
