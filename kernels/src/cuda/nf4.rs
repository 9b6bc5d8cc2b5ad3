//! NF4 on the GPU: a device-resident [`Nf4Tensor`] (same layout), quantisation with double quantisation,
//! dequantisation to fp32/bf16/f16, and the decode-time matrix-vector product (batch 1..8). Every result is
//! checked against `crate::nf4` by the GPU parity tests (`tests/gpu_parity.rs`).

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::NF4;
use super::device::{Gpu, blocks_for, cuda_err};
use crate::error::KernelError;
use crate::nf4::{self, DoubleQuantAbsmax, Nf4Absmax, Nf4Tensor};

/// The largest batch the GEMV kernels take.
pub const MAX_GEMV_BATCH: usize = 8;

/// Which GEMV kernel to run (both compute the same function; the benchmark times both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvVariant {
    /// One row per warp (`nf4_gemv_bB`): the simplest form.
    RowPerWarp,
    /// Four rows per warp (`nf4_gemv4_bB`): each loaded x value feeds four rows.
    FourRowsPerWarp,
}

/// Block scales on the device.
pub enum GpuAbsmax {
    /// One fp32 absmax per block.
    Plain(CudaSlice<f32>),
    /// 8-bit codes, one fp32 scale per 256 blocks, and the offset.
    Double {
        /// One code per NF4 block.
        codes: CudaSlice<u8>,
        /// One scale per 256 codes.
        scales: CudaSlice<f32>,
        /// The mean added back.
        offset: f32,
    },
}

/// An NF4 matrix on the device, with the lookup tables its kernels read.
pub struct GpuNf4 {
    rows: usize,
    cols: usize,
    codes: CudaSlice<u8>,
    absmax: GpuAbsmax,
    levels: CudaSlice<f32>,
    map: CudaSlice<f32>,
    dummy_u8: CudaSlice<u8>,
    dummy_f32: CudaSlice<f32>,
}

/// The absmax arguments every NF4 kernel takes: (plain, qcodes, scales, map, offset, dq flag).
struct AbsmaxArgs<'a> {
    plain: &'a CudaSlice<f32>,
    qcodes: &'a CudaSlice<u8>,
    scales: &'a CudaSlice<f32>,
    map: &'a CudaSlice<f32>,
    offset: f32,
    dq: i32,
}

impl GpuNf4 {
    fn with_parts(
        gpu: &Gpu,
        rows: usize,
        cols: usize,
        codes: CudaSlice<u8>,
        absmax: GpuAbsmax,
    ) -> Result<Self, KernelError> {
        Ok(Self {
            rows,
            cols,
            codes,
            absmax,
            levels: gpu.upload(&nf4::LEVELS)?,
            map: gpu.upload(nf4::dynamic_map())?,
            dummy_u8: gpu.zeros(1)?,
            dummy_f32: gpu.zeros(1)?,
        })
    }

    /// Copies a CPU-quantised tensor to the device.
    pub fn upload(gpu: &Gpu, t: &Nf4Tensor) -> Result<Self, KernelError> {
        let absmax = match t.absmax() {
            Nf4Absmax::Plain(v) => GpuAbsmax::Plain(gpu.upload(v)?),
            Nf4Absmax::Double(d) => GpuAbsmax::Double {
                codes: gpu.upload(d.codes())?,
                scales: gpu.upload(d.scales())?,
                offset: d.offset(),
            },
        };
        let codes = gpu.upload(t.codes())?;
        Self::with_parts(gpu, t.rows(), t.cols(), codes, absmax)
    }

    /// Quantises a row-major `rows x cols` fp32 matrix already on the device, bit for bit as
    /// [`Nf4Tensor::quantize`] does (the double-quantisation offset is computed on the host from the absmax).
    pub fn quantize(
        gpu: &Gpu,
        weights: &CudaSlice<f32>,
        rows: usize,
        cols: usize,
        double_quant: bool,
    ) -> Result<Self, KernelError> {
        let n = rows.checked_mul(cols).filter(|&n| n > 0).ok_or_else(|| {
            KernelError::invalid(
                "shape",
                format!("{rows}x{cols}: both dimensions must be at least 1"),
            )
        })?;
        if weights.len() != n {
            return Err(KernelError::invalid(
                "weights",
                format!("{} values, expected {rows}x{cols}", weights.len()),
            ));
        }
        let blocks = n.div_ceil(nf4::BLOCK);
        let mut codes = gpu.zeros::<u8>(n.div_ceil(2))?;
        let mut absmax = gpu.zeros::<f32>(blocks)?;
        let thresholds = gpu.upload(&nf4::THRESHOLDS)?;
        let f = gpu.function(&NF4, "nf4_quantize")?;
        let n_arg = n as i64;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(blocks, 8), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(weights)
            .arg(&n_arg)
            .arg(&thresholds)
            .arg(&mut codes)
            .arg(&mut absmax);
        // SAFETY: the arguments match nf4_quantize's signature; buffers hold n floats, ceil(n/2) and ceil(n/64).
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch nf4_quantize"))?;
        let absmax = if double_quant {
            let host = gpu.download(&absmax)?;
            KernelError::check_finite("weights (a block absmax)", &host)?;
            let offset = nf4::mean_f32(&host);
            let mut qcodes = gpu.zeros::<u8>(blocks)?;
            let mut scales = gpu.zeros::<f32>(blocks.div_ceil(nf4::ABSMAX_BLOCK))?;
            let map_thresholds = gpu.upload(nf4::dynamic_map_thresholds())?;
            let f = gpu.function(&NF4, "nf4_double_quant")?;
            let blocks_arg = blocks as i64;
            let cfg = LaunchConfig {
                grid_dim: (blocks_for(blocks, nf4::ABSMAX_BLOCK), 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = gpu.stream().launch_builder(&f);
            b.arg(&absmax)
                .arg(&blocks_arg)
                .arg(&offset)
                .arg(&map_thresholds)
                .arg(&mut qcodes)
                .arg(&mut scales);
            // SAFETY: matches nf4_double_quant; qcodes has `blocks` bytes, scales one float per 256 blocks.
            unsafe { b.launch(cfg) }.map_err(cuda_err("launch nf4_double_quant"))?;
            GpuAbsmax::Double {
                codes: qcodes,
                scales,
                offset,
            }
        } else {
            GpuAbsmax::Plain(absmax)
        };
        Self::with_parts(gpu, rows, cols, codes, absmax)
    }

    /// Copies the tensor back into the CPU type.
    pub fn download(&self, gpu: &Gpu) -> Result<Nf4Tensor, KernelError> {
        let absmax = match &self.absmax {
            GpuAbsmax::Plain(v) => Nf4Absmax::Plain(gpu.download(v)?),
            GpuAbsmax::Double {
                codes,
                scales,
                offset,
            } => Nf4Absmax::Double(DoubleQuantAbsmax::from_parts(
                gpu.download(codes)?,
                gpu.download(scales)?,
                *offset,
            )?),
        };
        Nf4Tensor::from_parts(self.rows, self.cols, gpu.download(&self.codes)?, absmax)
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// Always false.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes of codes and scales a full read of the tensor moves.
    pub fn bytes(&self) -> usize {
        self.codes.len()
            + match &self.absmax {
                GpuAbsmax::Plain(v) => 4 * v.len(),
                GpuAbsmax::Double { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
            }
    }

    fn absmax_args(&self) -> AbsmaxArgs<'_> {
        match &self.absmax {
            GpuAbsmax::Plain(v) => AbsmaxArgs {
                plain: v,
                qcodes: &self.dummy_u8,
                scales: &self.dummy_f32,
                map: &self.map,
                offset: 0.0,
                dq: 0,
            },
            GpuAbsmax::Double {
                codes,
                scales,
                offset,
            } => AbsmaxArgs {
                plain: &self.dummy_f32,
                qcodes: codes,
                scales,
                map: &self.map,
                offset: *offset,
                dq: 1,
            },
        }
    }

    fn dequantize_raw<T>(
        &self,
        gpu: &Gpu,
        kernel: &str,
        out: &mut CudaSlice<T>,
    ) -> Result<(), KernelError> {
        let n = self.len();
        if out.len() < n {
            return Err(KernelError::invalid(
                "out",
                format!("{} elements, needs {n}", out.len()),
            ));
        }
        self.launch_dequantize(gpu, kernel, out, None)
    }

    /// Dequantises into bf16 rows `ld` elements apart: row `i` of the weight fills `out[i * ld .. i * ld + cols]`
    /// and the other columns are left as they are (the K-extended LoRA layout keeps B there). Needs `cols` a
    /// multiple of 32 and `ld` a multiple of 8, at least `cols`.
    pub fn dequantize_bf16_rows(
        &self,
        gpu: &Gpu,
        out: &mut CudaSlice<u16>,
        ld: usize,
    ) -> Result<(), KernelError> {
        let (rows, cols) = (self.rows, self.cols);
        if !cols.is_multiple_of(32) || !ld.is_multiple_of(8) || ld < cols {
            return Err(KernelError::invalid(
                "ld",
                format!(
                    "{ld} for {rows}x{cols}: strided dequantisation needs cols a multiple of 32 and ld a \
                     multiple of 8, at least cols"
                ),
            ));
        }
        let need = (rows - 1) * ld + cols;
        if out.len() < need {
            return Err(KernelError::invalid(
                "out",
                format!("{} elements, rows {ld} apart need {need}", out.len()),
            ));
        }
        self.launch_dequantize(gpu, "nf4_dequantize_bf16_ld", out, Some(ld))
    }

    /// Launches one of the dequantise kernels; `ld` selects the strided one (sizes checked by the caller).
    fn launch_dequantize<T>(
        &self,
        gpu: &Gpu,
        kernel: &str,
        out: &mut CudaSlice<T>,
        ld: Option<usize>,
    ) -> Result<(), KernelError> {
        let n = self.len();
        let f = gpu.function(&NF4, kernel)?;
        let a = self.absmax_args();
        let n_arg = n as i64;
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(n.div_ceil(32), 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(&self.codes)
            .arg(a.plain)
            .arg(a.qcodes)
            .arg(a.scales)
            .arg(a.map)
            .arg(&a.offset)
            .arg(&a.dq);
        b.arg(&n_arg).arg(&self.levels).arg(out);
        let (cols, ld_arg) = (self.cols as i64, ld.unwrap_or(0) as i64);
        if ld.is_some() {
            b.arg(&cols).arg(&ld_arg);
        }
        // SAFETY: matches the NF4_DEQUANT signature (plus cols and ld for nf4_dequantize_bf16_ld); `out` holds
        // the n elements, or the rows ld apart, that the kernel writes (checked by the callers).
        unsafe { b.launch(cfg) }.map_err(cuda_err(format!("launch {kernel}")))?;
        Ok(())
    }

    /// Dequantises into fp32 (`out` has at least `len()` elements).
    pub fn dequantize_f32(&self, gpu: &Gpu, out: &mut CudaSlice<f32>) -> Result<(), KernelError> {
        self.dequantize_raw(gpu, "nf4_dequantize_f32", out)
    }

    /// Dequantises into bf16, stored as raw 16-bit values.
    pub fn dequantize_bf16(&self, gpu: &Gpu, out: &mut CudaSlice<u16>) -> Result<(), KernelError> {
        self.dequantize_raw(gpu, "nf4_dequantize_bf16", out)
    }

    /// Dequantises into f16, stored as raw 16-bit values.
    pub fn dequantize_f16(&self, gpu: &Gpu, out: &mut CudaSlice<u16>) -> Result<(), KernelError> {
        self.dequantize_raw(gpu, "nf4_dequantize_f16", out)
    }

    /// `y[b] = W x[b]` for `batch` fp32 vectors (`x` is `batch x cols`, `y` is `batch x rows`, row-major).
    /// Needs `cols` to be a multiple of 32 (16-byte rows of codes). Runs the one-row-per-warp kernel.
    pub fn gemv(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        batch: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        self.gemv_with(gpu, x, batch, y, GemvVariant::RowPerWarp)
    }

    /// [`GpuNf4::gemv`] with a chosen kernel.
    pub fn gemv_with(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        batch: usize,
        y: &mut CudaSlice<f32>,
        variant: GemvVariant,
    ) -> Result<(), KernelError> {
        self.check_gemv(x, batch, y)?;
        let (name, rows_per_block) = match variant {
            GemvVariant::RowPerWarp => (format!("nf4_gemv_b{batch}"), 8),
            GemvVariant::FourRowsPerWarp => (format!("nf4_gemv4_b{batch}"), 32),
        };
        self.launch_gemv(gpu, x, y, &name, rows_per_block, None)
    }

    /// Decoding through a LoRA adapter in one pass over W: `y[b] = W x[b] + B_ext hx[b]` for `batch` fp32
    /// vectors, with `b_ext` the adapter's B (`rows x r` bf16, dense) and `hx` (`batch x r` fp32) holding
    /// `s A x[b]` (`lora_gemv_down`). The four-rows-per-warp kernel with each row's r extra terms.
    pub fn gemv_lora(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        batch: usize,
        (b_ext, r, hx): (&CudaSlice<u16>, usize, &CudaSlice<f32>),
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        self.check_gemv(x, batch, y)?;
        if r == 0 || b_ext.len() < self.rows * r || hx.len() < batch * r {
            return Err(KernelError::invalid(
                "adapter",
                format!(
                    "rank {r}: B has {} values (needs {} x {r}), hx {} (needs {batch} x {r})",
                    b_ext.len(),
                    self.rows,
                    hx.len()
                ),
            ));
        }
        let name = format!("nf4_gemv4_lora_b{batch}");
        self.launch_gemv(gpu, x, y, &name, 32, Some((b_ext, r, hx)))
    }

    /// The batch and sizes every GEMV kernel needs.
    fn check_gemv(
        &self,
        x: &CudaSlice<f32>,
        batch: usize,
        y: &CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        if !(1..=MAX_GEMV_BATCH).contains(&batch) {
            return Err(KernelError::invalid(
                "batch",
                format!("{batch}, accepted 1..={MAX_GEMV_BATCH}"),
            ));
        }
        if !self.cols.is_multiple_of(32) {
            return Err(KernelError::invalid(
                "cols",
                format!("{}: the GEMV kernel needs a multiple of 32", self.cols),
            ));
        }
        if x.len() < batch * self.cols || y.len() < batch * self.rows {
            return Err(KernelError::invalid(
                "x/y",
                format!(
                    "x has {}, y {} elements; need {} and {}",
                    x.len(),
                    y.len(),
                    batch * self.cols,
                    batch * self.rows
                ),
            ));
        }
        if i32::try_from(self.rows).is_err() || i32::try_from(self.cols).is_err() {
            return Err(KernelError::invalid(
                "shape",
                "rows and cols must fit in i32",
            ));
        }
        Ok(())
    }

    fn launch_gemv(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        name: &str,
        rows_per_block: usize,
        ext: Option<(&CudaSlice<u16>, usize, &CudaSlice<f32>)>,
    ) -> Result<(), KernelError> {
        let (rows, cols) = (self.rows as i32, self.cols as i32);
        let f = gpu.function(&NF4, name)?;
        let a = self.absmax_args();
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(self.rows, rows_per_block), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(&self.codes)
            .arg(a.plain)
            .arg(a.qcodes)
            .arg(a.scales)
            .arg(a.map)
            .arg(&a.offset)
            .arg(&a.dq);
        b.arg(x).arg(y).arg(&rows).arg(&cols).arg(&self.levels);
        let r_arg = ext.map_or(0, |(_, r, _)| r as i32);
        if let Some((bx, _, hx)) = ext {
            b.arg(bx).arg(&r_arg).arg(hx);
        }
        // SAFETY: matches NF4_GEMV / NF4_GEMV4 (and NF4_GEMV4_LORA with the adapter's three arguments); x, y and
        // the adapter buffers were checked to hold what the kernel reads and writes.
        unsafe { b.launch(cfg) }.map_err(cuda_err(format!("launch {name}")))?;
        Ok(())
    }

    /// `Y (m x rows) = X (m x cols) W^T` on the tensor cores (`nf4_gemm_mma_bf16`: mma.sync bf16, fp32
    /// accumulation, W dequantised tile by tile into shared memory, never to device memory). `x` and `y` are raw
    /// bf16; `cols` must be a multiple of 64. A first, unpipelined kernel: [`super::gemm::Blas::nf4_xwt`]
    /// (dequantise + cuBLAS) is the alternative, and the benchmark times both.
    pub fn matmul_bf16_mma(
        &self,
        gpu: &Gpu,
        m: usize,
        x: &CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        // With r = 0 the kernel never reads its adapter operand: x stands in for it, so nothing is allocated.
        self.launch_mma(gpu, m, x, self.cols, (x, 0), y)
    }

    /// The K-extended product of the LoRA layer in one pass: `Y (m x rows) = x_ext [W | B]^T` where `x_ext`'s
    /// rows are `cols + r` values apart (`[x | s h]`) and `b` is the adapter's B (`rows x r` bf16, dense), so
    /// `Y = x W^T + s h B^T` without materialising the dequantised weight. `r` must be a multiple of 8.
    pub fn matmul_bf16_mma_ext(
        &self,
        gpu: &Gpu,
        m: usize,
        x_ext: &CudaSlice<u16>,
        b: &CudaSlice<u16>,
        r: usize,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        if r == 0 || !r.is_multiple_of(8) || b.len() < self.rows * r {
            return Err(KernelError::invalid(
                "b",
                format!(
                    "rank {r} with {} values: needs a multiple of 8 and {} x {r} values",
                    b.len(),
                    self.rows
                ),
            ));
        }
        self.launch_mma(gpu, m, x_ext, self.cols + r, (b, r), y)
    }

    fn launch_mma(
        &self,
        gpu: &Gpu,
        m: usize,
        x: &CudaSlice<u16>,
        ldx: usize,
        (bx, r): (&CudaSlice<u16>, usize),
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        if m == 0 || !self.cols.is_multiple_of(64) {
            return Err(KernelError::invalid(
                "shape",
                format!(
                    "m = {m}, cols = {}: need m >= 1 and cols a multiple of 64",
                    self.cols
                ),
            ));
        }
        if x.len() < (m - 1) * ldx + self.cols + r || y.len() < m * self.rows {
            return Err(KernelError::invalid(
                "x/y",
                format!(
                    "buffers too small for {m} rows of {} values {ldx} apart",
                    self.cols + r
                ),
            ));
        }
        let dims = (
            i32::try_from(m),
            i32::try_from(self.rows),
            i32::try_from(self.cols),
            i32::try_from(ldx),
            i32::try_from(r),
        );
        let (Ok(mi), Ok(ni), Ok(ki), Ok(ldxi), Ok(ri)) = dims else {
            return Err(KernelError::invalid(
                "shape",
                "m, rows, cols and the row stride must fit in i32",
            ));
        };
        let f = gpu.function(&NF4, "nf4_gemm_mma_bf16")?;
        let a = self.absmax_args();
        let cfg = LaunchConfig {
            grid_dim: (self.rows.div_ceil(128) as u32, m.div_ceil(128) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(x)
            .arg(&self.codes)
            .arg(a.plain)
            .arg(a.qcodes)
            .arg(a.scales)
            .arg(a.map)
            .arg(&a.offset)
            .arg(&a.dq);
        b.arg(&self.levels).arg(y).arg(&mi).arg(&ni).arg(&ki);
        b.arg(&ldxi).arg(bx).arg(&ri);
        // SAFETY: matches nf4_gemm_mma_bf16's signature; x holds m rows of cols + r values ldx apart, y m*rows
        // values, bx rows*r values (or r = 0 and it is not read).
        unsafe { b.launch(cfg) }.map_err(cuda_err("launch nf4_gemm_mma_bf16"))?;
        Ok(())
    }
}
