//! The NF4 x activation product for training and prefill through cuBLAS: the NF4 weight is dequantised once
//! into a bf16 scratch, then `cublasGemmEx` multiplies in bf16 with fp32 accumulation. (The tiled tensor-core
//! kernel that would dequantise tiles into shared memory is not written yet; see kernels/README.md.)

use cudarc::cublas::{CudaBlas, result as cublas, sys as cublas_sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::{Gpu, cuda_err};
use super::nf4::GpuNf4;
use crate::error::KernelError;

/// A cuBLAS handle on the crate's stream.
pub struct Blas {
    blas: CudaBlas,
}

impl Blas {
    /// Opens cuBLAS (`libcublas.so*` must be on the library search path).
    pub fn new(gpu: &Gpu) -> Result<Self, KernelError> {
        // SAFETY: only probes dlopen for the cuBLAS library names.
        if !unsafe { cublas_sys::is_culib_present() } {
            return Err(KernelError::CudaUnavailable(
                "cuBLAS (libcublas.so) is not on the library search path".into(),
            ));
        }
        Ok(Self {
            blas: CudaBlas::new(gpu.stream().clone()).map_err(cuda_err("create cuBLAS handle"))?,
        })
    }

    /// Row-major `C (m x n) = X (m x k) W^T` with `W` `n x k`; bf16 (raw 16-bit) in and out, fp32 accumulation.
    #[allow(clippy::too_many_arguments)]
    pub fn bf16_xwt(
        &self,
        gpu: &Gpu,
        m: usize,
        n: usize,
        k: usize,
        x: &CudaSlice<u16>,
        w: &CudaSlice<u16>,
        c: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        if x.len() < m * k || w.len() < n * k || c.len() < m * n {
            return Err(KernelError::invalid(
                "gemm",
                format!("buffers too small for {m}x{n}x{k}"),
            ));
        }
        let dim = |v: usize, what: &'static str| {
            i32::try_from(v)
                .map_err(|_| KernelError::invalid(what, format!("{v} does not fit in i32")))
        };
        let (mi, ni, ki) = (dim(m, "m")?, dim(n, "n")?, dim(k, "k")?);
        let (alpha, beta) = (1.0f32, 0.0f32);
        let stream = gpu.stream();
        let (wp, _gw) = w.device_ptr(stream);
        let (xp, _gx) = x.device_ptr(stream);
        let (cp, _gc) = c.device_ptr_mut(stream);
        let bf16 = cublas_sys::cudaDataType_t::CUDA_R_16BF;
        // SAFETY: column-major view of the row-major product: C^T (n x m) = W^T (W stored k x n, transposed) times
        // X^T (stored k x m); the buffer sizes were checked above and the pointers stay valid for the call.
        unsafe {
            cublas::gemm_ex(
                *self.blas.handle(),
                cublas_sys::cublasOperation_t::CUBLAS_OP_T,
                cublas_sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const _,
                wp as *const _,
                bf16,
                ki,
                xp as *const _,
                bf16,
                ki,
                (&beta) as *const f32 as *const _,
                cp as *mut _,
                bf16,
                ni,
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cuda_err("cublasGemmEx bf16"))
    }

    /// `Y (m x out) = X (m x in) W^T` for an NF4 `W` (`out x in`): dequantise W into `scratch` (at least
    /// `out * in` bf16 values), then the bf16 product.
    pub fn nf4_xwt(
        &self,
        gpu: &Gpu,
        m: usize,
        x: &CudaSlice<u16>,
        w: &GpuNf4,
        scratch: &mut CudaSlice<u16>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        w.dequantize_bf16(gpu, scratch)?;
        self.bf16_xwt(gpu, m, w.rows(), w.cols(), x, scratch, y)
    }
}
