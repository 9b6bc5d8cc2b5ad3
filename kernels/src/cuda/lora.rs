//! The LoRA linear layer on the GPU, composed from one fp32 tiled matrix-product kernel with fused dropout,
//! scale and accumulate epilogues (`kernels/cuda/lora.cu`); the frozen weight is NF4, dequantised to an fp32
//! scratch. Checked against `crate::lora` by the GPU parity tests.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::LORA;
use super::device::{Gpu, cuda_err, i32_of};
use super::nf4::GpuNf4;
use crate::error::KernelError;
use crate::lora::LoraDims;

/// One operand of [`gemm_f32`]: a row-major matrix, whether it is used transposed, and an optional 0/1 mask
/// (same layout) with the factor that a kept element is multiplied by.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    /// The stored matrix.
    pub data: &'a CudaSlice<f32>,
    /// Leading dimension (stored row length).
    pub ld: usize,
    /// Read as its transpose.
    pub trans: bool,
    /// Optional dropout mask and factor.
    pub mask: Option<(&'a CudaSlice<u8>, f32)>,
}

impl<'a> Operand<'a> {
    /// A plain operand.
    pub fn new(data: &'a CudaSlice<f32>, ld: usize, trans: bool) -> Self {
        Self {
            data,
            ld,
            trans,
            mask: None,
        }
    }

    /// The same operand with a dropout mask.
    pub fn masked(self, mask: &'a CudaSlice<u8>, factor: f32) -> Self {
        Self {
            mask: Some((mask, factor)),
            ..self
        }
    }
}

/// `C (m x n, row-major, ld n) = alpha * op(A) op(B) * c_mask + beta * C` (see `lora.cu` for the exact formula).
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    gpu: &Gpu,
    m: usize,
    n: usize,
    k: usize,
    a: Operand<'_>,
    b: Operand<'_>,
    alpha: f32,
    beta: f32,
    c: &mut CudaSlice<f32>,
    c_mask: Option<(&CudaSlice<u8>, f32)>,
) -> Result<(), KernelError> {
    let need = |o: &Operand<'_>, rows: usize, cols: usize| {
        let (r, cl) = if o.trans { (cols, rows) } else { (rows, cols) };
        (r - 1) * o.ld + cl
    };
    if m == 0 || n == 0 || k == 0 {
        return Err(KernelError::invalid(
            "gemm",
            format!("{m}x{n}x{k}: every size must be at least 1"),
        ));
    }
    if a.data.len() < need(&a, m, k) || b.data.len() < need(&b, k, n) || c.len() < m * n {
        return Err(KernelError::invalid(
            "gemm",
            format!("buffers too small for {m}x{n}x{k}"),
        ));
    }
    let dummy: CudaSlice<u8> = gpu.zeros(1)?;
    let (a_mask, a_has, a_f) = a.mask.map_or((&dummy, 0i32, 1.0f32), |(m, f)| (m, 1, f));
    let (b_mask, b_has, b_f) = b.mask.map_or((&dummy, 0i32, 1.0f32), |(m, f)| (m, 1, f));
    let (c_m, c_has, c_f) = c_mask.map_or((&dummy, 0i32, 1.0f32), |(m, f)| (m, 1, f));
    let (mi, ni, ki) = (i32_of(m, "m")?, i32_of(n, "n")?, i32_of(k, "k")?);
    let (lda, ldb, ldc) = (i32_of(a.ld, "lda")?, i32_of(b.ld, "ldb")?, ni);
    let (ta, tb) = (i32::from(a.trans), i32::from(b.trans));
    let f = gpu.function(&LORA, "lora_gemm_f32")?;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(16) as u32, m.div_ceil(16) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mi).arg(&ni).arg(&ki);
    l.arg(a.data)
        .arg(&lda)
        .arg(&ta)
        .arg(a_mask)
        .arg(&a_has)
        .arg(&a_f);
    l.arg(b.data)
        .arg(&ldb)
        .arg(&tb)
        .arg(b_mask)
        .arg(&b_has)
        .arg(&b_f);
    l.arg(&alpha)
        .arg(&beta)
        .arg(c)
        .arg(&ldc)
        .arg(c_m)
        .arg(&c_has)
        .arg(&c_f);
    // SAFETY: matches lora_gemm_f32's signature; buffer sizes checked above.
    unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_gemm_f32"))?;
    Ok(())
}

/// Device buffers of one LoRA layer's trainable parameters and this step's dropout.
pub struct GpuLora<'a> {
    /// Sizes.
    pub dims: LoraDims,
    /// `r x in`.
    pub a: &'a CudaSlice<f32>,
    /// `out x r`.
    pub b: &'a CudaSlice<f32>,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout probability and keep mask (`tokens x in`), or `None`.
    pub dropout: Option<(f32, &'a CudaSlice<u8>)>,
}

impl GpuLora<'_> {
    fn dropout_factor(&self) -> Option<(&CudaSlice<u8>, f32)> {
        self.dropout
            .map(|(p, mask)| (mask, crate::dropout::keep_scale(p)))
    }

    /// Forward: `y = x W^T + s (dropout(x) A^T) B^T`; fills `h = dropout(x) A^T` (`tokens x r`) for the backward.
    /// `w_scratch` (at least `out x in` floats) receives the dequantised W.
    pub fn forward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        w: &GpuNf4,
        w_scratch: &mut CudaSlice<f32>,
        h: &mut CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        check_w(w, &self.dims)?;
        w.dequantize_f32(gpu, w_scratch)?;
        self.forward_dense(gpu, x, w_scratch, h, y)
    }

    /// [`GpuLora::forward`] with the frozen W already dense in fp32 (`out x in`, row-major): a dense layer, or an
    /// NF4 one dequantised by the caller.
    pub fn forward_dense(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        h: &mut CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        } = self.dims;
        let mut xa = Operand::new(x, k, false);
        if let Some((mask, f)) = self.dropout_factor() {
            xa = xa.masked(mask, f);
        }
        gemm_f32(
            gpu,
            m,
            n,
            k,
            Operand::new(x, k, false),
            Operand::new(w, k, true),
            1.0,
            0.0,
            y,
            None,
        )?;
        gemm_f32(
            gpu,
            m,
            r,
            k,
            xa,
            Operand::new(self.a, k, true),
            1.0,
            0.0,
            h,
            None,
        )?;
        gemm_f32(
            gpu,
            m,
            n,
            r,
            Operand::new(h, r, false),
            Operand::new(self.b, r, true),
            self.scale,
            1.0,
            y,
            None,
        )
    }

    /// Backward: `dB = s dy^T h`, `dh = s dy B`, `dA = dh^T dropout(x)`, `dx = dy W + (dh A) * mask / (1 - p)`.
    /// `w_scratch` must hold the dequantised W (as [`GpuLora::forward`] left it); `dh` is `tokens x r` scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        w_scratch: &CudaSlice<f32>,
        h: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        dh: &mut CudaSlice<f32>,
        da: &mut CudaSlice<f32>,
        db: &mut CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        } = self.dims;
        let s = self.scale;
        gemm_f32(
            gpu,
            n,
            r,
            m,
            Operand::new(dy, n, true),
            Operand::new(h, r, false),
            s,
            0.0,
            db,
            None,
        )?;
        gemm_f32(
            gpu,
            m,
            r,
            n,
            Operand::new(dy, n, false),
            Operand::new(self.b, r, false),
            s,
            0.0,
            dh,
            None,
        )?;
        let mut xb = Operand::new(x, k, false);
        if let Some((mask, f)) = self.dropout_factor() {
            xb = xb.masked(mask, f);
        }
        gemm_f32(
            gpu,
            r,
            k,
            m,
            Operand::new(dh, r, true),
            xb,
            1.0,
            0.0,
            da,
            None,
        )?;
        gemm_f32(
            gpu,
            m,
            k,
            n,
            Operand::new(dy, n, false),
            Operand::new(w_scratch, k, false),
            1.0,
            0.0,
            dx,
            None,
        )?;
        let c_mask = self.dropout_factor();
        gemm_f32(
            gpu,
            m,
            k,
            r,
            Operand::new(dh, r, false),
            Operand::new(self.a, k, false),
            1.0,
            1.0,
            dx,
            c_mask,
        )
    }
}

/// The NF4 weight is `out x in` for `dims`, or an error naming `w`.
pub(super) fn check_w(w: &GpuNf4, dims: &LoraDims) -> Result<(), KernelError> {
    if (w.rows(), w.cols()) != (dims.out_features, dims.in_features) {
        return Err(KernelError::invalid(
            "w",
            format!(
                "NF4 weight is {}x{}, expected {}x{}",
                w.rows(),
                w.cols(),
                dims.out_features,
                dims.in_features
            ),
        ));
    }
    Ok(())
}
