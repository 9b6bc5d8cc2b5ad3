//! cuBLAS products in bf16 with fp32 accumulation, described row-major ([`RowGemm`]: strided operands, either
//! one transposed) and translated once, in [`RowGemm::column_major`], into the column-major call cuBLAS takes;
//! a float64 model of that call ([`column_major_reference`]) lets CPU tests check the translation. The NF4 x
//! activation product through cuBLAS ([`Blas::nf4_xwt`]) dequantises the weight once into a bf16 scratch and
//! multiplies; the tiled tensor-core kernel that dequantises tiles into shared memory is in `super::nf4`.

use cudarc::cublas::{CudaBlas, result as cublas, sys as cublas_sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, sys::CUdeviceptr};

use super::device::{Gpu, cuda_err};
use super::nf4::GpuNf4;
use crate::error::KernelError;

/// A row-major product `C (m x n) = alpha op(A) op(B) + beta C`, accumulated in fp32. `op(A)` is `m x k`: `A`
/// stored as `m x k` rows, or, with `a_t`, as `k x m` rows and transposed. `op(B)` is `k x n`: `B` stored as
/// `k x n`, or, with `b_t`, as `n x k` and transposed. `lda`, `ldb`, `ldc` are the distances between stored
/// rows, in elements, so operands may be column windows of wider buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowGemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The inner size.
    pub k: usize,
    /// `A` is stored `k x m` (transposed).
    pub a_t: bool,
    /// Row stride of the stored `A`.
    pub lda: usize,
    /// `B` is stored `n x k` (transposed).
    pub b_t: bool,
    /// Row stride of the stored `B`.
    pub ldb: usize,
    /// Row stride of C.
    pub ldc: usize,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of C's old value (0: C is only written).
    pub beta: f32,
}

/// The same product as cuBLAS's column-major `gemm` sees it. cuBLAS's first operand is our `B` and its second
/// our `A`, because a row-major `C` is the column-major `C^T = op(B)^T op(A)^T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnMajorGemm {
    /// `transa` of the call (applies to its first operand, our `B`).
    pub trans_first: bool,
    /// `transb` of the call (applies to its second operand, our `A`).
    pub trans_second: bool,
    /// cuBLAS `m`, `n`, `k`.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Leading dimensions of the first operand (our `B`), the second (our `A`) and C.
    pub ld_first: usize,
    pub ld_second: usize,
    pub ldc: usize,
}

impl RowGemm {
    /// `C (m x n) = A (m x k) B^T`, `B` stored `n x k`, all dense: the linear layer's `x W^T`.
    pub fn xwt(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            a_t: false,
            lda: k,
            b_t: true,
            ldb: k,
            ldc: n,
            alpha: 1.0,
            beta: 0.0,
        }
    }

    /// Stored (rows, columns) of `A`, `B` and C.
    fn stored(&self) -> [(usize, usize); 3] {
        let a = if self.a_t {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let b = if self.b_t {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        [a, b, (self.m, self.n)]
    }

    /// Elements each of `A`, `B`, C must hold: `(rows - 1) * ld + columns`.
    pub fn lens(&self) -> [usize; 3] {
        let ld = [self.lda, self.ldb, self.ldc];
        let mut out = [0; 3];
        for (i, (rows, cols)) in self.stored().into_iter().enumerate() {
            out[i] = (rows - 1) * ld[i] + cols;
        }
        out
    }

    /// Sizes at least 1, every leading dimension at least its stored row's length, everything within i32.
    pub fn check(&self) -> Result<(), KernelError> {
        if self.m == 0 || self.n == 0 || self.k == 0 {
            return Err(KernelError::invalid(
                "gemm",
                format!("{self:?}: m, n and k must be at least 1"),
            ));
        }
        let ld = [("lda", self.lda), ("ldb", self.ldb), ("ldc", self.ldc)];
        for ((name, ld), (_, cols)) in ld.into_iter().zip(self.stored()) {
            if ld < cols {
                return Err(KernelError::invalid(
                    "gemm",
                    format!(
                        "{name} {ld} is shorter than a stored row ({cols} elements) in {self:?}"
                    ),
                ));
            }
        }
        for v in [self.m, self.n, self.k, self.lda, self.ldb, self.ldc] {
            if i32::try_from(v).is_err() {
                return Err(KernelError::invalid(
                    "gemm",
                    format!("{v} does not fit in i32 ({self:?})"),
                ));
            }
        }
        Ok(())
    }

    /// The column-major call that computes this product.
    pub fn column_major(&self) -> ColumnMajorGemm {
        ColumnMajorGemm {
            trans_first: self.b_t,
            trans_second: self.a_t,
            m: self.n,
            n: self.m,
            k: self.k,
            ld_first: self.ldb,
            ld_second: self.lda,
            ldc: self.ldc,
        }
    }
}

/// cuBLAS's `gemm` in float64, as its documentation defines it (column-major, `op(X)` = X or X^T):
/// `C[i + j ldc] = alpha sum_l op(first)[i][l] op(second)[l][j] + beta C[i + j ldc]`, i < m, j < n. The CPU
/// tests run [`RowGemm::column_major`] through it to show that the translation computes the row-major product.
pub fn column_major_reference(
    g: &ColumnMajorGemm,
    alpha: f64,
    first: &[f64],
    second: &[f64],
    beta: f64,
    c: &mut [f64],
) {
    let at = |x: &[f64], trans: bool, ld: usize, i: usize, l: usize| {
        if trans { x[l + i * ld] } else { x[i + l * ld] }
    };
    for j in 0..g.n {
        for i in 0..g.m {
            let mut s = 0.0;
            for l in 0..g.k {
                s += at(first, g.trans_first, g.ld_first, i, l)
                    * at(second, g.trans_second, g.ld_second, l, j);
            }
            let o = i + j * g.ldc;
            c[o] = alpha * s + if beta == 0.0 { 0.0 } else { beta * c[o] };
        }
    }
}

/// An element type cuBLAS may write C in: bf16 (raw 16-bit) or fp32.
pub trait GemmOut {
    /// The cuBLAS data type.
    const TYPE: cublas_sys::cudaDataType_t;
}
impl GemmOut for u16 {
    const TYPE: cublas_sys::cudaDataType_t = cublas_sys::cudaDataType_t::CUDA_R_16BF;
}
impl GemmOut for f32 {
    const TYPE: cublas_sys::cudaDataType_t = cublas_sys::cudaDataType_t::CUDA_R_32F;
}

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

    /// The row-major product `g` with bf16 `A` and `B` and a bf16 or fp32 C (views of wider buffers welcome).
    pub fn gemm<C: GemmOut>(
        &self,
        gpu: &Gpu,
        g: &RowGemm,
        a: &impl DevicePtr<u16>,
        b: &impl DevicePtr<u16>,
        c: &mut impl DevicePtrMut<C>,
    ) -> Result<(), KernelError> {
        g.check()?;
        let [la, lb, lc] = g.lens();
        for (name, have, need) in [("A", a.len(), la), ("B", b.len(), lb), ("C", c.len(), lc)] {
            if have < need {
                return Err(KernelError::invalid(
                    "gemm",
                    format!("{name} holds {have} elements, {g:?} needs {need}"),
                ));
            }
        }
        let stream = gpu.stream();
        let (ap, _ga) = a.device_ptr(stream);
        let (bp, _gb) = b.device_ptr(stream);
        let (cp, _gc) = c.device_ptr_mut(stream);
        // SAFETY: every operand holds the elements `g` reaches (checked above) and its pointer stays valid (the
        // guards live until after the call is queued).
        unsafe { self.gemm_raw::<C>(g, ap, bp, cp) }
    }

    /// # Safety
    /// `a`, `b` and `c` must point at device memory holding [`RowGemm::lens`] elements of bf16, bf16 and `C`,
    /// valid until the product has run; `g` must have passed [`RowGemm::check`]. `A` and `B` may overlap C's
    /// buffer only in elements C's window does not cover.
    pub(crate) unsafe fn gemm_raw<C: GemmOut>(
        &self,
        g: &RowGemm,
        a: CUdeviceptr,
        b: CUdeviceptr,
        c: CUdeviceptr,
    ) -> Result<(), KernelError> {
        let cm = g.column_major();
        let op = |t: bool| {
            if t {
                cublas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let bf16 = cublas_sys::cudaDataType_t::CUDA_R_16BF;
        // Checked to fit in i32 by RowGemm::check.
        let i = |v: usize| v as i32;
        // SAFETY: the caller's contract; the scalars are host fp32 values that outlive the call.
        unsafe {
            cublas::gemm_ex(
                *self.blas.handle(),
                op(cm.trans_first),
                op(cm.trans_second),
                i(cm.m),
                i(cm.n),
                i(cm.k),
                (&g.alpha) as *const f32 as *const _,
                b as *const _,
                bf16,
                i(cm.ld_first),
                a as *const _,
                bf16,
                i(cm.ld_second),
                (&g.beta) as *const f32 as *const _,
                c as *mut _,
                C::TYPE,
                i(cm.ldc),
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(cuda_err("cublasGemmEx bf16"))
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
        self.gemm(gpu, &RowGemm::xwt(m, n, k), x, w, c)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `op(A) op(B)` straight from the row-major definition.
    fn row_major(g: &RowGemm, a: &[f64], b: &[f64], c0: &[f64]) -> Vec<f64> {
        let mut c = c0.to_vec();
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0;
                for l in 0..g.k {
                    let av = if g.a_t {
                        a[l * g.lda + i]
                    } else {
                        a[i * g.lda + l]
                    };
                    let bv = if g.b_t {
                        b[j * g.ldb + l]
                    } else {
                        b[l * g.ldb + j]
                    };
                    s += av * bv;
                }
                let o = i * g.ldc + j;
                c[o] = f64::from(g.alpha) * s + f64::from(g.beta) * c0[o];
            }
        }
        c
    }

    fn values(seed: u64, n: usize) -> Vec<f64> {
        crate::testdata::normal_f32(seed, n)
            .into_iter()
            .map(f64::from)
            .collect()
    }

    #[test]
    fn the_column_major_call_computes_the_row_major_product_for_every_transpose_and_stride() {
        let mut case = 0u64;
        for a_t in [false, true] {
            for b_t in [false, true] {
                for (m, n, k, pad) in [(3usize, 5usize, 4usize, 0usize), (7, 2, 9, 3), (1, 6, 1, 2)]
                {
                    case += 1;
                    let (ar, ac) = if a_t { (k, m) } else { (m, k) };
                    let (br, bc) = if b_t { (n, k) } else { (k, n) };
                    let g = RowGemm {
                        m,
                        n,
                        k,
                        a_t,
                        lda: ac + pad,
                        b_t,
                        ldb: bc + 2 * pad,
                        ldc: n + pad,
                        alpha: 1.5,
                        beta: if pad > 0 { 0.5 } else { 0.0 },
                    };
                    g.check().unwrap();
                    let [la, lb, lc] = g.lens();
                    assert_eq!((la, lb), ((ar - 1) * g.lda + ac, (br - 1) * g.ldb + bc));
                    let (a, b, c0) = (
                        values(case, la),
                        values(case + 100, lb),
                        values(case + 200, lc),
                    );
                    let want = row_major(&g, &a, &b, &c0);
                    let mut got = c0.clone();
                    column_major_reference(
                        &g.column_major(),
                        1.5,
                        &b,
                        &a,
                        f64::from(g.beta),
                        &mut got,
                    );
                    for (o, (x, y)) in got.iter().zip(&want).enumerate() {
                        assert!((x - y).abs() < 1e-12, "{g:?}: element {o}: {x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn xwt_is_the_linear_layer_and_the_old_cublas_call() {
        let g = RowGemm::xwt(2048, 14336, 4096);
        let cm = g.column_major();
        // What bf16_xwt always passed: OP_T on W, OP_N on X, (n, m, k), lds (k, k, n).
        assert_eq!(
            cm,
            ColumnMajorGemm {
                trans_first: true,
                trans_second: false,
                m: 14336,
                n: 2048,
                k: 4096,
                ld_first: 4096,
                ld_second: 4096,
                ldc: 14336,
            }
        );
        assert_eq!(g.lens(), [2048 * 4096, 14336 * 4096, 2048 * 14336]);
    }

    #[test]
    fn bad_products_are_refused_with_the_field_named() {
        let mut g = RowGemm::xwt(4, 4, 4);
        g.lda = 3;
        let e = g.check().unwrap_err().to_string();
        assert!(e.contains("lda 3"), "{e}");
        let e = RowGemm::xwt(0, 4, 4).check().unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        let e = RowGemm::xwt(1 << 31, 4, 4).check().unwrap_err().to_string();
        assert!(e.contains("i32"), "{e}");
    }
}
