//! Flash-style causal GQA attention on the GPU (`kernels/cuda/attention.cu`): tiled forward with online softmax,
//! and a deterministic backward without atomics (delta = dout . out, then dK/dV per key tile, then dQ per query
//! tile). fp32 in and out, fp32 accumulation, head size up to 128. Checked against `crate::ops::attention` by
//! the GPU parity tests; the naive one-block-per-query kernels stay in [`super::ops`].

use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::ATTENTION;
use super::device::{Gpu, cuda_err, i32_of, need};
use crate::error::KernelError;
use crate::ops::attention::AttentionDims;

/// Threads per block of every attention kernel (`FA_THREADS` in attention.cu).
const THREADS: u32 = 256;
/// The largest head size the kernels take.
pub const MAX_HEAD_DIM: usize = 128;

/// The three tiled kernels (the delta kernel uses no dynamic shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kernel {
    Forward,
    BackwardDkDv,
    BackwardDq,
}

impl Kernel {
    /// The compiled variant for head sizes up to `dmax` (64 or 128).
    fn name(self, dmax: usize) -> String {
        let stem = match self {
            Kernel::Forward => "flash_attention_forward",
            Kernel::BackwardDkDv => "flash_attention_backward_dkdv",
            Kernel::BackwardDq => "flash_attention_backward_dq",
        };
        format!("{stem}_d{dmax}")
    }

    /// Dynamic shared memory in bytes; the same formulas as the header comment of attention.cu.
    fn shared_bytes(self, dmax: usize) -> usize {
        let row = dmax + 4;
        let floats = match self {
            Kernel::Forward => (64 + 64) * row + 64 * 68,
            Kernel::BackwardDkDv => (64 + 64 + 32 + 32) * row + 64 * 36 + 2 * 32,
            Kernel::BackwardDq => (64 + 64 + 32 + 32) * row + 64 * 36,
        };
        floats * 4
    }
}

/// The compiled head-size bound for `head_dim`: 64 or 128.
fn dmax_for(head_dim: usize) -> usize {
    if head_dim <= 64 { 64 } else { 128 }
}

fn check_dims(d: &AttentionDims) -> Result<(), KernelError> {
    let ok = d.batch >= 1
        && d.tokens >= 1
        && d.q_heads >= 1
        && d.kv_heads >= 1
        && d.q_heads.is_multiple_of(d.kv_heads)
        && (1..=MAX_HEAD_DIM).contains(&d.head_dim)
        && d.batch <= 65_535
        && d.q_heads <= 65_535;
    if ok {
        Ok(())
    } else {
        Err(KernelError::invalid(
            "attention dims",
            format!(
                "{d:?}: sizes >= 1, kv_heads dividing q_heads, head_dim 1..={MAX_HEAD_DIM} (larger heads: \
                 cuda::ops::attention_forward_naive), batch and q_heads at most 65535"
            ),
        ))
    }
}

/// Loads `kernel` for `d` with its dynamic shared memory allowed, and its launch configuration.
fn prepare(
    gpu: &Gpu,
    kernel: Kernel,
    d: &AttentionDims,
) -> Result<(cudarc::driver::CudaFunction, LaunchConfig), KernelError> {
    let dmax = dmax_for(d.head_dim);
    let bytes = kernel.shared_bytes(dmax);
    let limit = gpu
        .context()
        .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
        .map_err(cuda_err("query shared memory per block"))?;
    if bytes > limit.max(0) as usize {
        return Err(KernelError::CudaUnavailable(format!(
            "{} needs {bytes} bytes of shared memory per block; {} allows {limit}",
            kernel.name(dmax),
            gpu.name()
        )));
    }
    let name = kernel.name(dmax);
    let f = gpu.function(&ATTENTION, &name)?;
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
    let heads = match kernel {
        Kernel::BackwardDkDv => d.kv_heads,
        Kernel::Forward | Kernel::BackwardDq => d.q_heads,
    };
    let cfg = LaunchConfig {
        grid_dim: (d.tokens.div_ceil(64) as u32, heads as u32, d.batch as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: bytes as u32,
    };
    Ok((f, cfg))
}

/// The scalar arguments every kernel takes: T, Hq, Hkv, D.
fn scalars(d: &AttentionDims) -> Result<[i32; 4], KernelError> {
    Ok([
        i32_of(d.tokens, "tokens")?,
        i32_of(d.q_heads, "q_heads")?,
        i32_of(d.kv_heads, "kv_heads")?,
        i32_of(d.head_dim, "head_dim")?,
    ])
}

fn check_inputs(
    d: &AttentionDims,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_dims(d)?;
    let kv = d.batch * d.tokens * d.kv_heads * d.head_dim;
    need("q", q, d.batch * d.tokens * d.q_heads * d.head_dim)?;
    need("k", k, kv)?;
    need("v", v, kv)
}

/// Causal GQA attention forward: writes `out` (shaped like q) and one log-sum-exp per query row
/// (`(b * tokens + t) * q_heads + h`), the layout of the naive kernel.
pub fn forward(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    out: &mut CudaSlice<f32>,
    lse: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_inputs(&d, q, k, v)?;
    let rows = d.batch * d.tokens * d.q_heads;
    need("out", out, rows * d.head_dim)?;
    need("lse", lse, rows)?;
    let [t, hq, hkv, hd] = scalars(&d)?;
    let (f, cfg) = prepare(gpu, Kernel::Forward, &d)?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(&t).arg(&hq).arg(&hkv).arg(&hd);
    b.arg(out).arg(lse);
    // SAFETY: the arguments match flash_attention_forward_d* in attention.cu, the buffer sizes were checked above
    // and the dynamic shared memory is the kernel's own formula.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_forward"))?;
    Ok(())
}

/// Causal GQA attention backward: `dq`, `dk`, `dv` from the forward's `out` and `lse` and the output gradient.
/// Deterministic (no atomics; every sum in a fixed order). Allocates one float per query row as scratch; use
/// [`backward_with_scratch`] to reuse a buffer.
#[allow(clippy::too_many_arguments)]
pub fn backward(
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
    check_dims(&d)?;
    let mut delta = gpu.zeros::<f32>(d.batch * d.tokens * d.q_heads)?;
    backward_with_scratch(gpu, d, q, k, v, out, lse, dout, &mut delta, dq, dk, dv)
}

/// [`backward`] with a caller-owned scratch `delta` of at least `batch * tokens * q_heads` floats.
#[allow(clippy::too_many_arguments)]
pub fn backward_with_scratch(
    gpu: &Gpu,
    d: AttentionDims,
    q: &CudaSlice<f32>,
    k: &CudaSlice<f32>,
    v: &CudaSlice<f32>,
    out: &CudaSlice<f32>,
    lse: &CudaSlice<f32>,
    dout: &CudaSlice<f32>,
    delta: &mut CudaSlice<f32>,
    dq: &mut CudaSlice<f32>,
    dk: &mut CudaSlice<f32>,
    dv: &mut CudaSlice<f32>,
) -> Result<(), KernelError> {
    check_inputs(&d, q, k, v)?;
    let rows = d.batch * d.tokens * d.q_heads;
    let kv = d.batch * d.tokens * d.kv_heads * d.head_dim;
    need("out", out, rows * d.head_dim)?;
    need("lse", lse, rows)?;
    need("dout", dout, rows * d.head_dim)?;
    need("delta", delta, rows)?;
    need("dq", dq, rows * d.head_dim)?;
    need("dk", dk, kv)?;
    need("dv", dv, kv)?;
    let [t, hq, hkv, hd] = scalars(&d)?;

    // 1. delta = dout . out, one warp per row.
    let rows64 = rows as i64;
    let f = gpu.function(&ATTENTION, "flash_attention_delta")?;
    let warps = THREADS as usize / 32;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(warps) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(dout).arg(&rows64).arg(&hd).arg(&mut *delta);
    // SAFETY: the arguments match flash_attention_delta; out, dout and delta were checked above.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_delta"))?;

    // 2. dK, dV per key tile.
    let (f, cfg) = prepare(gpu, Kernel::BackwardDkDv, &d)?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&*delta);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&hd).arg(dk).arg(dv);
    // SAFETY: the arguments match flash_attention_backward_dkdv_d*; sizes checked above.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_backward_dkdv"))?;

    // 3. dQ per query tile.
    let (f, cfg) = prepare(gpu, Kernel::BackwardDq, &d)?;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(v).arg(dout).arg(lse).arg(&*delta);
    b.arg(&t).arg(&hq).arg(&hkv).arg(&hd).arg(dq);
    // SAFETY: the arguments match flash_attention_backward_dq_d*; sizes checked above.
    unsafe { b.launch(cfg) }.map_err(cuda_err("launch flash_attention_backward_dq"))?;
    Ok(())
}

/// Floating-point operations of the causal forward (two `T x T x D` products per q head, half of them masked):
/// `2 * batch * q_heads * T^2 * D`. The backward is counted as 2.5 times this (five such products), the
/// convention FlashAttention reports with.
pub fn forward_flops(d: &AttentionDims) -> f64 {
    2.0 * (d.batch * d.q_heads * d.head_dim) as f64 * (d.tokens as f64).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_a100_and_h100() {
        // sm_80 allows 163 KiB (166912 bytes) per block with opt-in, sm_90 227 KiB (232448 bytes).
        for k in [Kernel::Forward, Kernel::BackwardDkDv, Kernel::BackwardDq] {
            for dmax in [64, 128] {
                let bytes = k.shared_bytes(dmax);
                assert!(bytes <= 166_912, "{} needs {bytes}", k.name(dmax));
            }
        }
        // Two blocks of the D = 128 kernels fit one H100 SM (228 KiB, 1 KiB reserved per block).
        assert!(2 * (Kernel::BackwardDkDv.shared_bytes(128) + 1024) <= 233_472);
        // The formulas of attention.cu's header comment, as the CPU emulator's checker launches them.
        for (k, dmax, bytes) in [
            (Kernel::Forward, 128, 84_992),
            (Kernel::Forward, 64, 52_224),
            (Kernel::BackwardDkDv, 128, 110_848),
            (Kernel::BackwardDkDv, 64, 61_696),
            (Kernel::BackwardDq, 128, 110_592),
            (Kernel::BackwardDq, 64, 61_440),
        ] {
            assert_eq!(k.shared_bytes(dmax), bytes, "{}", k.name(dmax));
        }
    }

    #[test]
    fn head_sizes_pick_the_smallest_variant_and_bad_dims_are_refused() {
        assert_eq!(dmax_for(1), 64);
        assert_eq!(dmax_for(64), 64);
        assert_eq!(dmax_for(80), 128);
        assert_eq!(dmax_for(128), 128);
        let d = AttentionDims {
            batch: 1,
            tokens: 8,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 128,
        };
        assert!(check_dims(&d).is_ok());
        for bad in [
            AttentionDims { head_dim: 129, ..d },
            AttentionDims { kv_heads: 3, ..d },
            AttentionDims { tokens: 0, ..d },
        ] {
            let err = check_dims(&bad).unwrap_err().to_string();
            assert!(err.contains("attention dims"), "{err}");
        }
        assert_eq!(forward_flops(&d), 2.0 * 4.0 * 128.0 * 64.0);
    }
}
