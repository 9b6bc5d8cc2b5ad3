//! The kernel benchmark behind `tandem-worker bench kernels`: NF4 dequantise, GEMV and GEMM, the LoRA
//! adapter's extra cost, the op set (`super::bench_ops`), and causal GQA attention (flash and naive, forward and backward), at LLaMA-3.1-8B shapes, against ceilings measured in the same run (device-to-device
//! copy bandwidth, cuBLAS bf16 GEMM). Timing: CUDA events around each launch, warm-up first, the median of the
//! repeats, inputs rotated over enough copies to overflow the L2 cache.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, sys};

use super::attention as flash;
use super::device::{Gpu, cuda_err};
use super::gemm::{Blas, RowGemm};
use super::gemm_choice::{Nf4Gemm, Nf4GemmChooser};
use super::lora::{Operand, gemm_f32};
use super::lora_bf16::{AdapterBuffers, GpuLoraBf16};
use super::lora_fused::{ExtForwardBuffers, ExtGrads};
use super::nf4::{GemvVariant, GpuNf4};
use crate::error::KernelError;
use crate::lora::LoraDims;
use crate::nf4::Nf4Tensor;
use crate::ops::attention::AttentionDims;
use crate::testdata::normal_f32;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed repeats per measurement (the median is reported).
    pub repeats: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Tokens for the GEMM and LoRA measurements.
    pub tokens: usize,
    /// LoRA rank.
    pub rank: usize,
    /// Weight shapes `(out_features, in_features)`.
    pub shapes: Vec<(usize, usize)>,
    /// Causal GQA attention shape for the flash and naive attention rows (`None`: skip them).
    pub attention: Option<AttentionDims>,
    /// The op-set rows (embedding, RMSNorm, RoPE, SwiGLU, cross-entropy, AdamW, global norm) at LLaMA-3.1-8B
    /// sizes (`super::bench_ops`).
    pub op_set: bool,
}

impl Default for BenchOptions {
    /// LLaMA-3.1-8B: q/o projections 4096x4096, gate/up 14336x4096, down 4096x14336; 2048 tokens; r = 32;
    /// attention over 2048 tokens, 32 q heads, 8 kv heads, head size 128, batch 1.
    fn default() -> Self {
        Self {
            repeats: 20,
            warmup: 3,
            tokens: 2048,
            rank: 32,
            shapes: vec![(4096, 4096), (14336, 4096), (4096, 14336)],
            attention: Some(AttentionDims {
                batch: 1,
                tokens: 2048,
                q_heads: 32,
                kv_heads: 8,
                head_dim: 128,
            }),
            op_set: true,
        }
    }
}

/// One measured line.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// The kernel (e.g. `nf4_dequantize_bf16`).
    pub kernel: String,
    /// The shape in words (e.g. `14336x4096`, `M=2048 N=14336 K=4096`).
    pub shape: String,
    /// Median time per launch, milliseconds.
    pub median_ms: f64,
    /// Bytes the kernel must move at least (each input read once, each output written once), when memory-bound.
    pub bytes: Option<f64>,
    /// Floating-point operations, when arithmetic-bound.
    pub flops: Option<f64>,
    /// Achieved GB/s (`bytes / time`).
    pub gb_per_s: Option<f64>,
    /// Achieved TFLOP/s.
    pub tflop_per_s: Option<f64>,
    /// Fraction of the matching ceiling measured in this run (copy bandwidth, or cuBLAS at the same shape).
    pub of_ceiling: Option<f64>,
    /// What the ceiling is.
    pub ceiling: String,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct BenchReport {
    /// Device name.
    pub device: String,
    /// Compute capability, e.g. 90.
    pub arch: u32,
    /// Device-to-device copy bandwidth (read + write), GB/s.
    pub copy_gb_per_s: f64,
    /// Every measurement.
    pub rows: Vec<BenchRow>,
}

/// Times `f` with CUDA events: `warmup` untimed calls, then the median of `repeats` timed ones (ms).
pub(super) fn time_median(
    gpu: &Gpu,
    o: &BenchOptions,
    mut f: impl FnMut(usize) -> Result<(), KernelError>,
) -> Result<f64, KernelError> {
    let ctx = gpu.context();
    let flags = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    for i in 0..o.warmup {
        f(i)?;
    }
    gpu.synchronize()?;
    let mut times = Vec::with_capacity(o.repeats);
    for i in 0..o.repeats.max(1) {
        let start = ctx.new_event(flags).map_err(cuda_err("create event"))?;
        let end = ctx.new_event(flags).map_err(cuda_err("create event"))?;
        start
            .record(gpu.stream())
            .map_err(cuda_err("record event"))?;
        f(o.warmup + i)?;
        end.record(gpu.stream()).map_err(cuda_err("record event"))?;
        times.push(f64::from(
            start.elapsed_ms(&end).map_err(cuda_err("event time"))?,
        ));
    }
    gpu.synchronize()?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Enough copies of an input of `bytes` bytes that rotating through them overflows the L2 cache (>= 2).
pub(super) fn copies_for(gpu: &Gpu, bytes: usize) -> usize {
    let l2 = gpu
        .context()
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
        .map(|v| v.max(0) as usize)
        .unwrap_or(64 << 20);
    (4 * l2).div_ceil(bytes.max(1)).clamp(2, 16)
}

pub(super) fn row(
    kernel: &str,
    shape: String,
    ms: f64,
    bytes: Option<f64>,
    flops: Option<f64>,
    ceiling: (&str, f64),
) -> BenchRow {
    let gb = bytes.map(|b| b / (ms * 1e-3) / 1e9);
    let tf = flops.map(|f| f / (ms * 1e-3) / 1e12);
    // Each row as it is measured, so a run cut short still leaves its figures in the log.
    tracing::info!(kernel, shape = %shape, median_ms = ms, gb_per_s = ?gb, tflop_per_s = ?tf, "bench row");
    let of = gb.or(tf).map(|v| v / ceiling.1);
    BenchRow {
        kernel: kernel.into(),
        shape,
        median_ms: ms,
        bytes,
        flops,
        gb_per_s: gb,
        tflop_per_s: tf,
        of_ceiling: of,
        ceiling: ceiling.0.into(),
    }
}

fn bf16_random(gpu: &Gpu, seed: u64, n: usize) -> Result<CudaSlice<u16>, KernelError> {
    let v: Vec<u16> = normal_f32(seed, n)
        .into_iter()
        .map(|x| half::bf16::from_f32(x * 0.05).to_bits())
        .collect();
    gpu.upload(&v)
}

/// Runs every measurement on `gpu`.
pub fn run(gpu: &Arc<Gpu>, o: &BenchOptions) -> Result<BenchReport, KernelError> {
    let mut rows = Vec::new();
    // Ceiling 1: device-to-device copy of 1 GiB, counting bytes read plus bytes written.
    let copy_len = 1usize << 28;
    let src = gpu.upload(
        &(0..copy_len)
            .map(|i| (i % 65_521) as f32)
            .collect::<Vec<_>>(),
    )?;
    let mut dst = gpu.zeros::<f32>(copy_len)?;
    let copy_ms = time_median(gpu, o, |_| {
        gpu.stream()
            .memcpy_dtod(&src, &mut dst)
            .map_err(cuda_err("copy"))
    })?;
    let copy_bytes = 2.0 * 4.0 * copy_len as f64;
    let copy_gbs = copy_bytes / (copy_ms * 1e-3) / 1e9;
    rows.push(row(
        "copy_dtod (ceiling)",
        "1 GiB".into(),
        copy_ms,
        Some(copy_bytes),
        None,
        ("copy", copy_gbs),
    ));
    drop((src, dst));
    // Dropout keep masks for a 2048 x 4096 activation: bytes written against the copy ceiling.
    let mask_n = o.tokens * 4096;
    let mut mask = gpu.zeros::<u8>(mask_n)?;
    let mask_ms = time_median(gpu, o, |i| {
        super::ops::dropout_keep_mask(gpu, 1, i as u64, 0.1, mask_n, &mut mask)
    })?;
    rows.push(row(
        "dropout_keep_mask",
        format!("{} x 4096", o.tokens),
        mask_ms,
        Some(mask_n as f64),
        None,
        ("copy", copy_gbs),
    ));
    drop(mask);
    let blas = Blas::new(gpu)?;
    let nf4_gemm = Nf4Gemm::new(gpu, Nf4GemmChooser::in_memory())?;

    for (si, &(n_out, k_in)) in o.shapes.iter().enumerate() {
        let shape = format!("{n_out}x{k_in}");
        let w_host = normal_f32(10 + si as u64, n_out * k_in)
            .into_iter()
            .map(|v| v * 0.02)
            .collect::<Vec<_>>();
        let cpu = Nf4Tensor::quantize(&w_host, n_out, k_in, true)?;
        let tensor_bytes = cpu.bytes();
        let copies = copies_for(gpu, tensor_bytes + 2 * n_out * k_in);
        let ws: Vec<GpuNf4> = (0..copies)
            .map(|_| GpuNf4::upload(gpu, &cpu))
            .collect::<Result<_, _>>()?;
        let w_elems = n_out * k_in;

        // NF4 -> bf16 dequantise: reads codes + absmax, writes 2 bytes per weight.
        let mut outs: Vec<CudaSlice<u16>> = (0..copies)
            .map(|_| gpu.zeros(w_elems))
            .collect::<Result<_, _>>()?;
        let ms = time_median(gpu, o, |i| {
            ws[i % copies].dequantize_bf16(gpu, &mut outs[i % copies])
        })?;
        let bytes = (tensor_bytes + 2 * w_elems) as f64;
        rows.push(row(
            "nf4_dequantize_bf16",
            shape.clone(),
            ms,
            Some(bytes),
            None,
            ("copy", copy_gbs),
        ));
        drop(outs);

        // NF4 GEMV, batch 1 and 8, both kernels: reads the 4-bit weights + scales once (x and y counted too).
        for batch in [1usize, 8] {
            let xs: Vec<CudaSlice<f32>> = (0..copies)
                .map(|c| gpu.upload(&normal_f32(100 + c as u64, batch * k_in)))
                .collect::<Result<_, _>>()?;
            let mut y = gpu.zeros::<f32>(batch * n_out)?;
            for (variant, label) in [
                (GemvVariant::RowPerWarp, "nf4_gemv"),
                (GemvVariant::FourRowsPerWarp, "nf4_gemv4"),
            ] {
                let ms = time_median(gpu, o, |i| {
                    ws[i % copies].gemv_with(gpu, &xs[i % copies], batch, &mut y, variant)
                })?;
                let bytes = (tensor_bytes + 4 * batch * (k_in + n_out)) as f64;
                let flops = 2.0 * (batch * w_elems) as f64;
                let mut r = row(
                    &format!("{label}_b{batch}"),
                    shape.clone(),
                    ms,
                    Some(bytes),
                    Some(flops),
                    ("copy", copy_gbs),
                );
                r.tflop_per_s = Some(flops / (ms * 1e-3) / 1e12);
                rows.push(r);
            }
            // Decoding through an r-rank adapter: s A x, then one pass over W adding B hx (the four-rows
            // kernel). Bytes: the plain GEMV's plus A and B in bf16; the ratio is what the adapter adds to the
            // plain four-rows GEMV.
            let r_ = o.rank;
            if k_in.is_multiple_of(8) && r_.is_multiple_of(8) {
                let plain_ms = time_median(gpu, o, |i| {
                    ws[i % copies].gemv_with(
                        gpu,
                        &xs[i % copies],
                        batch,
                        &mut y,
                        GemvVariant::FourRowsPerWarp,
                    )
                })?;
                let (a16, b16) = (
                    bf16_random(gpu, 25, r_ * k_in)?,
                    bf16_random(gpu, 26, n_out * r_)?,
                );
                let layer = GpuLoraBf16 {
                    dims: LoraDims {
                        tokens: batch,
                        in_features: k_in,
                        out_features: n_out,
                        rank: r_,
                    },
                    a: &a16,
                    b: &b16,
                    scale: 1.0,
                    dropout: None,
                };
                let mut hx = gpu.zeros::<f32>(batch * r_)?;
                let ms = time_median(gpu, o, |i| {
                    layer.decode(gpu, &ws[i % copies], &xs[i % copies], &mut hx, &mut y)
                })?;
                let bytes =
                    (tensor_bytes + 2 * r_ * (k_in + n_out) + 4 * batch * (k_in + n_out)) as f64;
                let mut r = row(
                    &format!("lora_decode_b{batch}_r{r_} (gemv4 + adapter)"),
                    shape.clone(),
                    ms,
                    Some(bytes),
                    None,
                    ("copy", copy_gbs),
                );
                r.of_ceiling = Some(ms / plain_ms - 1.0);
                r.ceiling = "added to the plain nf4_gemv4 time".into();
                rows.push(r);
            }
        }

        // GEMM at M tokens: dense cuBLAS bf16 (the ceiling), then NF4 = dequantise to a bf16 scratch + cuBLAS.
        let m = o.tokens;
        let flops = 2.0 * (m * w_elems) as f64;
        let gshape = format!("M={m} N={n_out} K={k_in}");
        let x = bf16_random(gpu, 7, m * k_in)?;
        let w_dense = bf16_random(gpu, 8, w_elems)?;
        let mut c = gpu.zeros::<u16>(m * n_out)?;
        let dense_ms = time_median(gpu, o, |_| {
            blas.bf16_xwt(gpu, m, n_out, k_in, &x, &w_dense, &mut c)
        })?;
        let dense_tf = flops / (dense_ms * 1e-3) / 1e12;
        rows.push(row(
            "cublas_bf16_gemm (ceiling)",
            gshape.clone(),
            dense_ms,
            None,
            Some(flops),
            ("cuBLAS bf16", dense_tf),
        ));
        let mut scratch = gpu.zeros::<u16>(w_elems)?;
        let nf4_ms = time_median(gpu, o, |i| {
            blas.nf4_xwt(gpu, m, &x, &ws[i % copies], &mut scratch, &mut c)
        })?;
        rows.push(row(
            "nf4_gemm (dequantise + cuBLAS)",
            gshape.clone(),
            nf4_ms,
            None,
            Some(flops),
            ("cuBLAS bf16", dense_tf),
        ));
        if k_in % 64 == 0 {
            let mma_ms = time_median(gpu, o, |i| {
                ws[i % copies].matmul_bf16_mma(gpu, m, &x, &mut c)
            })?;
            let label = "nf4_gemm (mma.sync tiles)";
            rows.push(row(
                label,
                gshape.clone(),
                mma_ms,
                None,
                Some(flops),
                ("cuBLAS bf16", dense_tf),
            ));
        }
        // The per-shape chooser (in memory here, so the figures are fresh): which path it keeps.
        let choice = nf4_gemm.choice(gpu, m, &x, &ws[0], &mut scratch, &mut c)?;
        let chosen_ms = choice.ms(choice.path).unwrap_or(f64::NAN);
        rows.push(row(
            &format!("nf4_gemm chosen: {}", choice.path.label()),
            gshape.clone(),
            chosen_ms,
            None,
            Some(flops),
            ("cuBLAS bf16", dense_tf),
        ));
        // LoRA r with bf16 activations on the tensor cores: the adapter's two products on top of the base output,
        // against the base product's time (cuBLAS bf16 at the same shape); `of_ceiling` is adapter / base.
        let r_ = o.rank;
        if k_in.is_multiple_of(8) && r_.is_multiple_of(8) {
            let a16 = bf16_random(gpu, 23, r_ * k_in)?;
            let b16 = bf16_random(gpu, 24, n_out * r_)?;
            let layer = GpuLoraBf16 {
                dims: LoraDims {
                    tokens: m,
                    in_features: k_in,
                    out_features: n_out,
                    rank: r_,
                },
                a: &a16,
                b: &b16,
                scale: 1.0,
                dropout: None,
            };
            let mut h = gpu.zeros::<f32>(m * r_)?;
            let mut h16 = gpu.zeros::<u16>(m * r_)?;
            let mut partial = gpu.zeros::<f32>(layer.partial_len())?;
            let ms = time_median(gpu, o, |_| {
                layer.adapter_forward(
                    gpu,
                    &x,
                    AdapterBuffers {
                        h: &mut h,
                        h_bf16: &mut h16,
                        partial: &mut partial,
                    },
                    &mut c,
                )
            })?;
            let lflops = 2.0 * (m * r_ * (k_in + n_out)) as f64;
            let mut lr = row(
                &format!("lora_adapter_fwd_r{r_} (bf16 mma)"),
                gshape.clone(),
                ms,
                None,
                Some(lflops),
                ("base GEMM time", 1.0),
            );
            lr.of_ceiling = Some(ms / dense_ms);
            lr.ceiling = "adapter time / cuBLAS bf16 base GEMM time".into();
            rows.push(lr);
            k_extended_rows(
                gpu,
                o,
                &blas,
                &layer,
                &ws[0],
                (dense_ms, copy_gbs),
                &gshape,
                &mut rows,
            )?;
        }
        drop((x, w_dense, c, scratch));

        // LoRA r: the adapter's two extra products (h = x A^T, y += s h B^T) with the fp32 tiled kernel, against
        // the base product's time (cuBLAS bf16 at the same shape); `of_ceiling` is adapter / base.
        let r_ = o.rank;
        let xf = gpu.upload(&normal_f32(20, m * k_in))?;
        let a = gpu.upload(&normal_f32(21, r_ * k_in))?;
        let b = gpu.upload(&normal_f32(22, n_out * r_))?;
        let mut h = gpu.zeros::<f32>(m * r_)?;
        let mut y = gpu.zeros::<f32>(m * n_out)?;
        let lora_ms = time_median(gpu, o, |_| {
            gemm_f32(
                gpu,
                m,
                r_,
                k_in,
                Operand::new(&xf, k_in, false),
                Operand::new(&a, k_in, true),
                1.0,
                0.0,
                &mut h,
                None,
            )?;
            gemm_f32(
                gpu,
                m,
                n_out,
                r_,
                Operand::new(&h, r_, false),
                Operand::new(&b, r_, true),
                1.0,
                1.0,
                &mut y,
                None,
            )
        })?;
        let lflops = 2.0 * (m * r_ * (k_in + n_out)) as f64;
        let mut lr = row(
            &format!("lora_adapter_fwd_r{r_} (fp32 tiled)"),
            gshape,
            lora_ms,
            None,
            Some(lflops),
            ("base GEMM time", 1.0),
        );
        lr.of_ceiling = Some(lora_ms / dense_ms);
        lr.ceiling = "adapter time / cuBLAS bf16 base GEMM time".into();
        rows.push(lr);
    }
    if o.op_set {
        super::bench_ops::op_rows(gpu, o, copy_gbs, &mut rows)?;
    }
    if let Some(d) = o.attention {
        attention_rows(gpu, o, d, &mut rows)?;
    }
    Ok(BenchReport {
        device: gpu.name().to_string(),
        arch: gpu.arch(),
        copy_gb_per_s: copy_gbs,
        rows,
    })
}

/// The K-extended bf16 LoRA layer (`super::lora_fused`) at `layer`'s shape, no dropout: preparing `W_ext`
/// (strided dequantise + copy of B; GB/s against the copy ceiling), the forward (down-projection + one GEMM with
/// K + r) against the dense base GEMM (`of_ceiling` = what the adapter adds, as a fraction of the base), and the
/// backward (dx and g in one GEMM, then dx's adapter part, dA and dB) against the base layer's own backward
/// product `dx = dy W` on cuBLAS.
#[allow(clippy::too_many_arguments)]
fn k_extended_rows(
    gpu: &Gpu,
    o: &BenchOptions,
    blas: &Blas,
    layer: &GpuLoraBf16<'_>,
    w: &GpuNf4,
    (dense_ms, copy_gbs): (f64, f64),
    gshape: &str,
    rows: &mut Vec<BenchRow>,
) -> Result<(), KernelError> {
    let LoraDims {
        tokens: m,
        in_features: k,
        out_features: n,
        rank: r,
    } = layer.dims;
    if !k.is_multiple_of(32) {
        return Ok(());
    }
    let kx = layer.ext_ld();
    let mut w_ext = gpu.zeros::<u16>(n * kx)?;
    let prep_ms = time_median(gpu, o, |_| layer.prepare_ext_weight(gpu, w, &mut w_ext))?;
    rows.push(row(
        &format!("lora_k_extended prepare W_ext r{r}"),
        format!("{n}x{k} + {n}x{r}"),
        prep_ms,
        Some((w.bytes() + 2 * n * k + 4 * n * r) as f64),
        None,
        ("copy", copy_gbs),
    ));
    // The activations rotate over enough copies to overflow L2, so the down-projection's read of x is not
    // flattered (the dense base GEMM it is compared with is arithmetic-bound).
    let copies = copies_for(gpu, 2 * m * kx);
    let mut x_exts: Vec<CudaSlice<u16>> = (0..copies)
        .map(|c| bf16_random(gpu, 31 + c as u64, m * kx))
        .collect::<Result<_, _>>()?;
    let mut y = gpu.zeros::<u16>(m * n)?;
    let mut h = gpu.zeros::<f32>(m * r)?;
    let mut partial = gpu.zeros::<f32>(layer.partial_len())?;
    let fwd_ms = time_median(gpu, o, |i| {
        layer.forward_ext(
            gpu,
            blas,
            &mut x_exts[i % copies],
            &w_ext,
            ExtForwardBuffers {
                h: &mut h,
                partial: &mut partial,
            },
            &mut y,
        )
    })?;
    let base_flops = 2.0 * (m * n * k) as f64;
    let mut fr = row(
        &format!("lora_k_extended_fwd_r{r} (base + adapter)"),
        gshape.to_string(),
        fwd_ms,
        None,
        Some(base_flops + 2.0 * (m * r * (k + n)) as f64),
        ("base GEMM time", 1.0),
    );
    fr.of_ceiling = Some(fwd_ms / dense_ms - 1.0);
    fr.ceiling = "added to the cuBLAS bf16 base GEMM time".into();
    rows.push(fr);
    if k.is_multiple_of(64) {
        // The same through the mma.sync tile kernel: NF4 read directly, no W_ext.
        let tiles_ms = time_median(gpu, o, |i| {
            layer.forward_ext_tiles(
                gpu,
                &mut x_exts[i % copies],
                w,
                ExtForwardBuffers {
                    h: &mut h,
                    partial: &mut partial,
                },
                &mut y,
            )
        })?;
        let mut tr = row(
            &format!("lora_k_extended_fwd_r{r} (NF4 mma.sync tiles)"),
            gshape.to_string(),
            tiles_ms,
            None,
            Some(base_flops + 2.0 * (m * r * (k + n)) as f64),
            ("base GEMM time", 1.0),
        );
        tr.of_ceiling = Some(tiles_ms / dense_ms - 1.0);
        tr.ceiling = "added to the cuBLAS bf16 base GEMM time".into();
        rows.push(tr);
    }

    // The base layer's own backward product, dx = dy W (m x k, inner n), dense on cuBLAS.
    let dy = bf16_random(gpu, 32, m * n)?;
    let w_dense = bf16_random(gpu, 33, n * k)?;
    let mut dx = gpu.zeros::<u16>(m * k)?;
    let dx_gemm = RowGemm {
        m,
        n: k,
        k: n,
        a_t: false,
        lda: n,
        b_t: false,
        ldb: k,
        ldc: k,
        alpha: 1.0,
        beta: 0.0,
    };
    let base_bwd_ms = time_median(gpu, o, |_| blas.gemm(gpu, &dx_gemm, &dy, &w_dense, &mut dx))?;
    drop((dx, w_dense));
    let mut dx_ext = gpu.zeros::<u16>(m * kx)?;
    let mut da = gpu.zeros::<f32>(r * k)?;
    let mut db = gpu.zeros::<f32>(n * r)?;
    let bwd_ms = time_median(gpu, o, |_| {
        layer.backward_ext(
            gpu,
            blas,
            &x_exts[0],
            &w_ext,
            &dy,
            &mut dx_ext,
            ExtGrads {
                da: &mut da,
                db: &mut db,
                accumulate: false,
            },
            None,
        )
    })?;
    let mut br = row(
        &format!("lora_k_extended_bwd_r{r} (dx, dA, dB)"),
        gshape.to_string(),
        bwd_ms,
        None,
        Some(base_flops + 2.0 * (m * r * (n + 2 * k) + m * n * r) as f64),
        ("base dx GEMM time", 1.0),
    );
    br.of_ceiling = Some(bwd_ms / base_bwd_ms - 1.0);
    br.ceiling = "added to the cuBLAS bf16 dx = dy W time".into();
    rows.push(br);
    Ok(())
}

/// Causal GQA attention at `d`: the fp32 flash kernels, the naive ones (fewer repeats: they are slow) and the bf16
/// tensor-core forward and backward. FLOPs: [`flash::forward_flops`] forward, 2.5 times that backward.
/// `of_ceiling` of an fp32 flash row is its speed-up over the naive kernel, of a tensor-core row its speed-up over
/// the fp32 flash kernel in the same direction (of the balanced dK/dV row: over the unsplit tensor-core backward).
fn attention_rows(
    gpu: &Gpu,
    o: &BenchOptions,
    d: AttentionDims,
    rows: &mut Vec<BenchRow>,
) -> Result<(), KernelError> {
    let shape = format!(
        "B={} T={} Hq={} Hkv={} D={}",
        d.batch, d.tokens, d.q_heads, d.kv_heads, d.head_dim
    );
    let nq = d.batch * d.tokens * d.q_heads * d.head_dim;
    let nk = d.batch * d.tokens * d.kv_heads * d.head_dim;
    let q = gpu.upload(&normal_f32(30, nq))?;
    let k = gpu.upload(&normal_f32(31, nk))?;
    let v = gpu.upload(&normal_f32(32, nk))?;
    let dout = gpu.upload(&normal_f32(33, nq))?;
    let mut out = gpu.zeros::<f32>(nq)?;
    let mut lse = gpu.zeros::<f32>(d.batch * d.tokens * d.q_heads)?;
    let mut delta = gpu.zeros::<f32>(d.batch * d.tokens * d.q_heads)?;
    let (mut dq, mut dk, mut dv) = (gpu.zeros(nq)?, gpu.zeros(nk)?, gpu.zeros(nk)?);
    let fwd_flops = flash::forward_flops(&d);
    let bwd_flops = 2.5 * fwd_flops;
    let flash_fwd = time_median(gpu, o, |_| {
        flash::forward(gpu, d, &q, &k, &v, &mut out, &mut lse)
    })?;
    let flash_bwd = time_median(gpu, o, |_| {
        flash::backward_with_scratch(
            gpu, d, &q, &k, &v, &out, &lse, &dout, &mut delta, &mut dq, &mut dk, &mut dv,
        )
    })?;
    // The bf16 tensor-core forward on the same values rounded to bf16.
    let to_bf16 = |seed: u64, n: usize| -> Vec<u16> {
        normal_f32(seed, n)
            .into_iter()
            .map(|x| half::bf16::from_f32(x).to_bits())
            .collect()
    };
    let (q16, k16, v16) = (
        gpu.upload(&to_bf16(30, nq))?,
        gpu.upload(&to_bf16(31, nk))?,
        gpu.upload(&to_bf16(32, nk))?,
    );
    let dout16 = gpu.upload(&to_bf16(33, nq))?;
    let mut out16 = gpu.zeros::<u16>(nq)?;
    let tc_fwd = time_median(gpu, o, |_| {
        super::attention_tc::forward(gpu, d, &q16, &k16, &v16, &mut out16, &mut lse)
    })?;
    let tc_bwd = time_median(gpu, o, |_| {
        super::attention_tc::backward_with_scratch(
            gpu, d, &q16, &k16, &v16, &out16, &lse, &dout16, &mut delta, &mut dq, &mut dk, &mut dv,
        )
    })?;
    // The same backward with the balanced dK/dV where the rule picks it (the unsplit kernel otherwise).
    let mut partials = gpu.zeros::<f32>(super::attention_tc::dkdv_partials_len(&d).max(1))?;
    let tc_bwd_balanced = time_median(gpu, o, |_| {
        super::attention_tc::backward_balanced(
            gpu,
            d,
            &q16,
            &k16,
            &v16,
            &out16,
            &lse,
            &dout16,
            &mut delta,
            &mut partials,
            &mut dq,
            &mut dk,
            &mut dv,
        )
    })?;
    let slow = BenchOptions {
        repeats: 3,
        warmup: 1,
        ..o.clone()
    };
    let naive_fwd = time_median(gpu, &slow, |_| {
        super::ops::attention_forward_naive(gpu, d, &q, &k, &v, &mut out, &mut lse)
    })?;
    let naive_bwd = time_median(gpu, &slow, |_| {
        super::ops::attention_backward_naive(
            gpu, d, &q, &k, &v, &out, &lse, &dout, &mut dq, &mut dk, &mut dv,
        )
    })?;
    let over_naive = "speed-up over the naive kernel";
    for (label, ms, flops, baseline) in [
        (
            "attention_fwd (flash, fp32)",
            flash_fwd,
            fwd_flops,
            Some((naive_fwd, over_naive)),
        ),
        (
            "attention_fwd (flash, bf16 tensor cores)",
            tc_fwd,
            fwd_flops,
            Some((flash_fwd, "speed-up over the fp32 flash kernel")),
        ),
        (
            "attention_bwd (flash, fp32)",
            flash_bwd,
            bwd_flops,
            Some((naive_bwd, over_naive)),
        ),
        (
            "attention_bwd (flash, bf16 tensor cores)",
            tc_bwd,
            bwd_flops,
            Some((flash_bwd, "speed-up over the fp32 flash kernel")),
        ),
        (
            "attention_bwd (flash, bf16 tensor cores, balanced dK/dV)",
            tc_bwd_balanced,
            bwd_flops,
            Some((tc_bwd, "speed-up over the unsplit tensor-core backward")),
        ),
        ("attention_fwd (naive, fp32)", naive_fwd, fwd_flops, None),
        ("attention_bwd (naive, fp32)", naive_bwd, bwd_flops, None),
    ] {
        let mut r = row(label, shape.clone(), ms, None, Some(flops), ("-", 1.0));
        r.of_ceiling = baseline.map(|(base, _)| base / ms);
        r.ceiling = baseline.map_or("-", |(_, what)| what).into();
        rows.push(r);
    }
    Ok(())
}

impl BenchReport {
    /// A plain-text table, one line per measurement.
    pub fn table(&self) -> String {
        // Columns as wide as their longest entry, so long kernel names and shapes stay aligned.
        let kw = self
            .rows
            .iter()
            .map(|r| r.kernel.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let sw = self
            .rows
            .iter()
            .map(|r| r.shape.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = format!(
            "device: {} (sm_{}), copy ceiling {:.0} GB/s\n{:<kw$} {:<sw$} {:>10} {:>10} {:>10} {:>8}  ceiling\n",
            self.device,
            self.arch,
            self.copy_gb_per_s,
            "kernel",
            "shape",
            "median ms",
            "GB/s",
            "TFLOP/s",
            "ratio"
        );
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        for r in &self.rows {
            out += &format!(
                "{:<kw$} {:<sw$} {:>10.4} {:>10} {:>10} {:>8}  {}\n",
                r.kernel,
                r.shape,
                r.median_ms,
                f(r.gb_per_s, 0),
                f(r.tflop_per_s, 1),
                f(r.of_ceiling, 3),
                r.ceiling
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_columns_aligned_whatever_the_name_lengths() {
        let report = BenchReport {
            device: "test".into(),
            arch: 90,
            copy_gb_per_s: 3000.0,
            rows: vec![
                row(
                    "short",
                    "1x1".into(),
                    1.0,
                    Some(1e9),
                    None,
                    ("copy", 3000.0),
                ),
                row(
                    "attention_bwd (flash, bf16 tensor cores, balanced dK/dV)",
                    "B=1 T=2048 Hq=32 Hkv=8 D=128".into(),
                    2.5,
                    None,
                    Some(1e12),
                    ("x", 1.0),
                ),
            ],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{table}");
        // The "median ms" column ends at the same place on the header and on every row.
        let end = lines[0].find("median ms").unwrap() + "median ms".len();
        assert!(lines[1][..end].ends_with("1.0000"), "{table}");
        assert!(lines[2][..end].ends_with("2.5000"), "{table}");
    }
}
