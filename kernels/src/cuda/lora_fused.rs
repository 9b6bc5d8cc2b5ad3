//! The bf16 LoRA layer on the K-extended layout, where the adapter rides inside the base product. With
//! `x_ext = [x | s h]` (`tokens x (in + r)`, `h = dropout(x) A^T`) and `W_ext = [W | B]` (`out x (in + r)`),
//! `x_ext W_ext^T = x W^T + s h B^T`: the whole forward is the small down-projection plus one cuBLAS GEMM whose K
//! is r longer, instead of a base GEMM followed by an up-projection that reads and rewrites all of y. The backward
//! uses the same trick: `dy W_ext = [dy W | dy B]` gives the base part of dx and `g = dy B` in one GEMM.
//!
//! Layout contract: the layer's input and its gradient live in buffers whose rows are [`GpuLoraBf16::ext_ld`]
//! (`in + r`) elements apart. The first `in` columns hold x (dx); the last r are the layer's own (s h in the
//! forward, g in the backward). `W_ext` is filled by [`GpuLoraBf16::prepare_ext_weight`] (the NF4 weight
//! dequantised into the left columns, B copied into the right ones); after an optimizer step changes B,
//! [`GpuLoraBf16::refresh_ext_b`] copies B again. Every product is described by [`plan`], which the GPU code
//! executes and the CPU tests check against the float64 LoRA reference through cuBLAS's column-major model.

use cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, sys::CUdeviceptr,
};

use super::compile::LORA;
use super::device::{Gpu, blocks_for, cuda_err, i32_of, need};
use super::gemm::{Blas, GemmOut, RowGemm};
use super::lora::check_w;
use super::lora_bf16::GpuLoraBf16;
use super::nf4::GpuNf4;
use crate::error::KernelError;
use crate::lora::LoraDims;

/// One cuBLAS product of the layer: the row-major description and where each operand starts in its buffer
/// (elements).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExtProduct {
    /// The product.
    pub gemm: RowGemm,
    /// Offset of `A` in its buffer.
    pub a_offset: usize,
    /// Offset of `B` in its buffer.
    pub b_offset: usize,
    /// Offset of C in its buffer.
    pub c_offset: usize,
}

/// Every product of one forward and backward (`k = in`, `n = out`, `r = rank`, `K' = in + r`, `s` the scale,
/// `f = 1 / (1 - p)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExtPlan {
    /// `y = x_ext W_ext^T`: A = x_ext, B = W_ext, C = y.
    pub forward: ExtProduct,
    /// `dx_ext = dy W_ext`: A = dy, B = W_ext, C = dx_ext (its last r columns are then g = dy B).
    pub dx: ExtProduct,
    /// The adapter's part of dx, `s f (g A)`: A = g (inside dx_ext), B = the LoRA A. Without dropout it adds
    /// straight into dx_ext (beta 1); with dropout it writes the fp32 scratch `t` (`tokens x in`), which
    /// `lora_masked_add_bf16` adds where the mask keeps.
    pub dx_adapter: ExtProduct,
    /// `dB = dy^T (s h)`: A = dy (transposed), B = s h (inside x_ext), C = dB (`out x r`, fp32).
    pub db: ExtProduct,
    /// `dA = s f g^T (mask x)`: A = g (inside dx_ext, transposed), B = x_ext (no dropout) or the masked copy
    /// (`tokens x in`), C = dA (`r x in`, fp32).
    pub da: ExtProduct,
}

/// The products for `dims` with scale `s`, dropout probability `p` (`None`: no dropout), adding into dA and dB
/// when `accumulate` (gradient accumulation over micro-batches) instead of overwriting them.
pub fn plan(dims: LoraDims, scale: f32, dropout: Option<f32>, accumulate: bool) -> ExtPlan {
    let LoraDims {
        tokens: m,
        in_features: k,
        out_features: n,
        rank: r,
    } = dims;
    let kx = k + r;
    let factor = dropout.map_or(1.0, crate::dropout::keep_scale);
    let grad_beta = if accumulate { 1.0 } else { 0.0 };
    let product = |gemm, a_offset, b_offset, c_offset| ExtProduct {
        gemm,
        a_offset,
        b_offset,
        c_offset,
    };
    let forward = RowGemm {
        lda: kx,
        ldb: kx,
        ..RowGemm::xwt(m, n, kx)
    };
    let dx = RowGemm {
        m,
        n: kx,
        k: n,
        a_t: false,
        lda: n,
        b_t: false,
        ldb: kx,
        ldc: kx,
        alpha: 1.0,
        beta: 0.0,
    };
    let dx_adapter = RowGemm {
        m,
        n: k,
        k: r,
        a_t: false,
        lda: kx,
        b_t: false,
        ldb: k,
        ldc: if dropout.is_some() { k } else { kx },
        alpha: scale * factor,
        beta: if dropout.is_some() { 0.0 } else { 1.0 },
    };
    let db = RowGemm {
        m: n,
        n: r,
        k: m,
        a_t: true,
        lda: n,
        b_t: false,
        ldb: kx,
        ldc: r,
        alpha: 1.0,
        beta: grad_beta,
    };
    let da = RowGemm {
        m: r,
        n: k,
        k: m,
        a_t: true,
        lda: kx,
        b_t: false,
        ldb: if dropout.is_some() { k } else { kx },
        ldc: k,
        alpha: scale * factor,
        beta: grad_beta,
    };
    ExtPlan {
        forward: product(forward, 0, 0, 0),
        dx: product(dx, 0, 0, 0),
        dx_adapter: product(dx_adapter, k, 0, 0),
        db: product(db, 0, k, 0),
        da: product(da, k, 0, 0),
    }
}

/// Scratch of the forward besides `x_ext` and y.
pub struct ExtForwardBuffers<'a> {
    /// `h = dropout(x) A^T`, `tokens x r`, fp32.
    pub h: &'a mut CudaSlice<f32>,
    /// At least [`GpuLoraBf16::partial_len`] floats.
    pub partial: &'a mut CudaSlice<f32>,
}

/// The adapter's gradients (fp32), written or, with `accumulate`, added to.
pub struct ExtGrads<'a> {
    /// `r x in`.
    pub da: &'a mut CudaSlice<f32>,
    /// `out x r`.
    pub db: &'a mut CudaSlice<f32>,
    /// Add into `da` and `db` instead of overwriting them.
    pub accumulate: bool,
}

/// What the backward needs under dropout (both `tokens x in`).
pub struct DropoutScratch<'a> {
    /// The adapter's share of dx before the mask, fp32.
    pub t: &'a mut CudaSlice<f32>,
    /// The kept activations, bf16.
    pub x_masked: &'a mut CudaSlice<u16>,
}

/// A device buffer's pointer and length, for products whose operands share a buffer.
#[derive(Clone, Copy)]
struct Raw {
    ptr: CUdeviceptr,
    len: usize,
}

/// Runs `p` on raw operands after checking that each operand's window lies inside its buffer.
///
/// # Safety
/// Each `Raw` must describe live device memory of its element type (bf16 for A and B, `C` for C) that stays
/// valid until the product has run.
unsafe fn run_product<C: GemmOut>(
    blas: &Blas,
    what: &'static str,
    p: &ExtProduct,
    a: Raw,
    b: Raw,
    c: Raw,
) -> Result<(), KernelError> {
    p.gemm.check()?;
    let [la, lb, lc] = p.gemm.lens();
    for (name, buf, off, len) in [
        ("A", &a, p.a_offset, la),
        ("B", &b, p.b_offset, lb),
        ("C", &c, p.c_offset, lc),
    ] {
        if off + len > buf.len {
            return Err(KernelError::invalid(
                what,
                format!(
                    "operand {name} needs elements {off}..{} of a buffer of {}",
                    off + len,
                    buf.len
                ),
            ));
        }
    }
    let at = |r: &Raw, off: usize, size: usize| r.ptr + (off * size) as CUdeviceptr;
    // SAFETY: the windows are inside the buffers (checked above); the caller keeps them alive.
    unsafe {
        blas.gemm_raw::<C>(
            &p.gemm,
            at(&a, p.a_offset, 2),
            at(&b, p.b_offset, 2),
            at(&c, p.c_offset, std::mem::size_of::<C>()),
        )
    }
}

fn raw<'a, T>(buf: &'a impl DevicePtr<T>, gpu: &'a Gpu) -> (Raw, impl Drop + 'a) {
    let (ptr, guard) = buf.device_ptr(gpu.stream());
    (
        Raw {
            ptr,
            len: buf.len(),
        },
        guard,
    )
}

fn raw_mut<'a, T>(buf: &'a mut impl DevicePtrMut<T>, gpu: &'a Gpu) -> (Raw, impl Drop + 'a) {
    let len = buf.len();
    let (ptr, guard) = buf.device_ptr_mut(gpu.stream());
    (Raw { ptr, len }, guard)
}

/// A grid-stride launch over `count` elements.
fn elementwise(count: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks_for(count, 256).min(8192), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl GpuLoraBf16<'_> {
    /// Row stride of the K-extended activations, their gradient and `W_ext`: `in + r`.
    pub fn ext_ld(&self) -> usize {
        self.dims.in_features + self.dims.rank
    }

    fn check_ext(
        &self,
        what: &'static str,
        buf_len: usize,
        rows: usize,
    ) -> Result<(), KernelError> {
        let need = rows * self.ext_ld();
        if buf_len < need {
            return Err(KernelError::invalid(
                what,
                format!(
                    "{buf_len} elements; the K-extended layout needs {rows} rows of {} = {need}",
                    self.ext_ld()
                ),
            ));
        }
        Ok(())
    }

    /// Fills `W_ext` (`out x (in + r)` bf16): the NF4 weight dequantised into the left `in` columns, B into the
    /// right r. Needs `in` a multiple of 32.
    pub fn prepare_ext_weight(
        &self,
        gpu: &Gpu,
        w: &GpuNf4,
        w_ext: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let d = self.dims;
        check_w(w, &d)?;
        self.check_ext("w_ext", w_ext.len(), d.out_features)?;
        w.dequantize_bf16_rows(gpu, w_ext, self.ext_ld())?;
        self.refresh_ext_b(gpu, w_ext)
    }

    /// Copies B into the right-hand r columns of `W_ext` (after an optimizer step changed B).
    pub fn refresh_ext_b(&self, gpu: &Gpu, w_ext: &mut CudaSlice<u16>) -> Result<(), KernelError> {
        let LoraDims {
            in_features: k,
            out_features: n,
            rank: r,
            ..
        } = self.dims;
        self.check_ext("w_ext", w_ext.len(), n)?;
        let f = gpu.function(&LORA, "lora_copy_rows_u16")?;
        let (ri, ni, ldd) = (
            i32_of(r, "rank")?,
            i32_of(n, "out_features")?,
            i32_of(self.ext_ld(), "in + rank")?,
        );
        let mut dst = w_ext.slice_mut(k..);
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(self.b)
            .arg(&ri)
            .arg(&ni)
            .arg(&ri)
            .arg(&mut dst)
            .arg(&ldd);
        // SAFETY: matches lora_copy_rows_u16; B is n x r dense, dst holds n rows of r values ldd apart (checked).
        unsafe { l.launch(elementwise(n * r)) }.map_err(cuda_err("launch lora_copy_rows_u16"))?;
        Ok(())
    }

    /// The forward on the K-extended layout: `h = dropout(x) A^T` (fp32 into `bufs.h`, `s h` in bf16 into the
    /// right-hand columns of `x_ext`), then `y = x_ext W_ext^T` in one cuBLAS GEMM. `x_ext` holds x in its left
    /// `in` columns; `W_ext` was filled by [`GpuLoraBf16::prepare_ext_weight`].
    pub fn forward_ext(
        &self,
        gpu: &Gpu,
        blas: &Blas,
        x_ext: &mut CudaSlice<u16>,
        w_ext: &CudaSlice<u16>,
        bufs: ExtForwardBuffers<'_>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let d = self.dims;
        self.check_ext("x_ext", x_ext.len(), d.tokens)?;
        self.check_ext("w_ext", w_ext.len(), d.out_features)?;
        let ld = self.ext_ld();
        // Reads x (left columns), then writes s h into the right columns: two launches, one after the other.
        self.down_partial(gpu, x_ext, ld, bufs.partial)?;
        let mut tail = x_ext.slice_mut(d.in_features..);
        self.down_reduce(gpu, bufs.partial, bufs.h, &mut tail, ld, self.scale)?;
        let p = plan(d, self.scale, self.dropout.map(|(p, _)| p), false);
        let (a, _ga) = raw(&*x_ext, gpu);
        let (b, _gb) = raw(w_ext, gpu);
        let (c, _gc) = raw_mut(y, gpu);
        // SAFETY: live buffers of the right element types, guards held until the call is queued.
        unsafe { run_product::<u16>(blas, "forward", &p.forward, a, b, c) }
    }

    /// The same forward with the base and adapter products in the mma.sync tile kernel
    /// (`GpuNf4::matmul_bf16_mma_ext`): the NF4 weight is dequantised tile by tile in shared memory, so no
    /// `W_ext` is needed; `in` must be a multiple of 64.
    pub fn forward_ext_tiles(
        &self,
        gpu: &Gpu,
        x_ext: &mut CudaSlice<u16>,
        w: &GpuNf4,
        bufs: ExtForwardBuffers<'_>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let d = self.dims;
        check_w(w, &d)?;
        self.check_ext("x_ext", x_ext.len(), d.tokens)?;
        let ld = self.ext_ld();
        self.down_partial(gpu, x_ext, ld, bufs.partial)?;
        let mut tail = x_ext.slice_mut(d.in_features..);
        self.down_reduce(gpu, bufs.partial, bufs.h, &mut tail, ld, self.scale)?;
        w.matmul_bf16_mma_ext(gpu, d.tokens, x_ext, self.b, d.rank, y)
    }

    /// Decoding through the adapter (`tokens` = batch, 1..=8 fp32 vectors of `in`, no dropout): `hx = s A x`
    /// (`lora_gemv_down`, `hx` at least `batch x r` floats), then `y = W x + B hx` in one pass over the NF4
    /// weight ([`GpuNf4::gemv_lora`]), the K-extended product for a few tokens. Needs `in` a multiple of 32.
    pub fn decode(
        &self,
        gpu: &Gpu,
        w: &GpuNf4,
        x: &CudaSlice<f32>,
        hx: &mut CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let LoraDims {
            tokens: batch,
            in_features: k,
            rank: r,
            ..
        } = self.dims;
        if self.dropout.is_some() {
            return Err(KernelError::invalid(
                "dropout",
                "decoding runs without dropout; build the layer with dropout: None",
            ));
        }
        check_w(w, &self.dims)?;
        need("x", x, batch * k)?;
        need("hx", hx, batch * r)?;
        let f = gpu.function(&LORA, "lora_gemv_down")?;
        let (ri, ki, bi) = (
            i32_of(r, "rank")?,
            i32_of(k, "in_features")?,
            i32_of(batch, "tokens")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(batch * r * 32, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(self.a)
            .arg(&ri)
            .arg(&ki)
            .arg(x)
            .arg(&bi)
            .arg(&self.scale)
            .arg(&mut *hx);
        // SAFETY: matches lora_gemv_down; A is r x k, x batch x k, hx batch x r (checked).
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_gemv_down"))?;
        w.gemv_lora(gpu, x, batch, (self.b, r, hx), y)
    }

    /// The backward on the K-extended layout, from `dy` (`tokens x out` bf16): `dx_ext` gets dx in its left
    /// `in` columns (the right r hold g = dy B afterwards), `grads` get dA and dB. `x_ext` is what
    /// [`GpuLoraBf16::forward_ext`] left (x and s h); with dropout, `scratch` is required.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_ext(
        &self,
        gpu: &Gpu,
        blas: &Blas,
        x_ext: &CudaSlice<u16>,
        w_ext: &CudaSlice<u16>,
        dy: &CudaSlice<u16>,
        dx_ext: &mut CudaSlice<u16>,
        grads: ExtGrads<'_>,
        scratch: Option<DropoutScratch<'_>>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        } = self.dims;
        self.check_ext("x_ext", x_ext.len(), m)?;
        self.check_ext("w_ext", w_ext.len(), n)?;
        self.check_ext("dx_ext", dx_ext.len(), m)?;
        need("dy", dy, m * n)?;
        need("da", grads.da, r * k)?;
        need("db", grads.db, n * r)?;
        let p = plan(
            self.dims,
            self.scale,
            self.dropout.map(|(p, _)| p),
            grads.accumulate,
        );
        let ld = self.ext_ld();
        let (mi, ki, ldi) = (
            i32_of(m, "tokens")?,
            i32_of(k, "in_features")?,
            i32_of(ld, "in + rank")?,
        );
        let mut masked = match (self.dropout, scratch) {
            (None, _) => None,
            (Some((_, mask)), Some(s)) => {
                need("t", s.t, m * k)?;
                need("x_masked", s.x_masked, m * k)?;
                // x_masked = mask * x (the 1 / (1 - p) is in the products' alpha).
                let f = gpu.function(&LORA, "lora_mask_rows_bf16")?;
                let mut l = gpu.stream().launch_builder(&f);
                l.arg(x_ext)
                    .arg(&ldi)
                    .arg(mask)
                    .arg(&mi)
                    .arg(&ki)
                    .arg(&mut *s.x_masked);
                // SAFETY: matches lora_mask_rows_bf16; x_ext has m rows of ld, mask and x_masked m x k (checked).
                unsafe { l.launch(elementwise(m * k)) }
                    .map_err(cuda_err("launch lora_mask_rows_bf16"))?;
                Some((mask, s))
            }
            (Some(_), None) => {
                return Err(KernelError::invalid(
                    "scratch",
                    "the layer has dropout: the backward needs DropoutScratch (t and x_masked)",
                ));
            }
        };
        {
            let (dyr, _g1) = raw(dy, gpu);
            let (wr, _g2) = raw(w_ext, gpu);
            let (xr, _g3) = raw(x_ext, gpu);
            let (ar, _g4) = raw(self.a, gpu);
            let (dxr, _g5) = raw_mut(&mut *dx_ext, gpu);
            let (dar, _g6) = raw_mut(&mut *grads.da, gpu);
            let (dbr, _g7) = raw_mut(&mut *grads.db, gpu);
            // SAFETY (every product): live buffers of the right element types, guards held to the end of the
            // block. The adapter's dx product without dropout reads g (columns >= in of dx_ext) and writes
            // columns < in of the same buffer: disjoint elements.
            unsafe {
                run_product::<u16>(blas, "dx", &p.dx, dyr, wr, dxr)?;
                run_product::<f32>(blas, "dB", &p.db, dyr, xr, dbr)?;
            }
            match &mut masked {
                None => unsafe {
                    run_product::<u16>(blas, "dx adapter", &p.dx_adapter, dxr, ar, dxr)?;
                    run_product::<f32>(blas, "dA", &p.da, dxr, xr, dar)?;
                },
                Some((_, s)) => {
                    let (tr, _g8) = raw_mut(&mut *s.t, gpu);
                    let (xm, _g9) = raw(&*s.x_masked, gpu);
                    unsafe {
                        run_product::<f32>(blas, "dx adapter", &p.dx_adapter, dxr, ar, tr)?;
                        run_product::<f32>(blas, "dA", &p.da, dxr, xm, dar)?;
                    }
                }
            }
        }
        if let Some((mask, s)) = masked {
            let f = gpu.function(&LORA, "lora_masked_add_bf16")?;
            let one = 1.0f32;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(&*s.t)
                .arg(mask)
                .arg(&mi)
                .arg(&ki)
                .arg(&one)
                .arg(&mut *dx_ext)
                .arg(&ldi);
            // SAFETY: matches lora_masked_add_bf16; t and mask are m x k, dx_ext has m rows of ld (checked).
            unsafe { l.launch(elementwise(m * k)) }
                .map_err(cuda_err("launch lora_masked_add_bf16"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::gemm::column_major_reference;
    use crate::lora::{self, LoraParams};
    use crate::testdata::{keep_mask, normal_f32};

    /// Runs one planned product on the CPU through cuBLAS's column-major model.
    fn exec(p: &ExtProduct, a: &[f64], b: &[f64], c: &mut [f64]) {
        let [la, lb, lc] = p.gemm.lens();
        assert!(p.a_offset + la <= a.len(), "{p:?}: A out of its buffer");
        assert!(p.b_offset + lb <= b.len(), "{p:?}: B out of its buffer");
        assert!(p.c_offset + lc <= c.len(), "{p:?}: C out of its buffer");
        column_major_reference(
            &p.gemm.column_major(),
            f64::from(p.gemm.alpha),
            &b[p.b_offset..],
            &a[p.a_offset..],
            f64::from(p.gemm.beta),
            &mut c[p.c_offset..],
        );
    }

    fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| f64::from(x)).collect()
    }

    #[track_caller]
    fn close(what: &str, got: &[f64], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(g, &w)| (g - f64::from(w)).powi(2))
            .sum();
        let den: f64 = want.iter().map(|&w| f64::from(w).powi(2)).sum();
        let err = (num / den).sqrt();
        assert!(err < 1e-6, "{what}: relative error {err}");
    }

    /// The whole layer, forward and backward, run as the GPU runs it (same products, offsets and strides; the
    /// element-wise kernels as their C source says), in float64, against the LoRA reference.
    #[test]
    fn the_k_extended_products_are_the_lora_forward_and_backward() {
        for (case, &(m, k, n, r, p, accumulate)) in [
            (5usize, 8usize, 6usize, 8usize, 0.0f32, false),
            (7, 16, 9, 8, 0.25, false),
            (3, 32, 5, 16, 0.1, true),
            (1, 24, 4, 8, 0.0, true),
        ]
        .iter()
        .enumerate()
        {
            let seed = 100 * case as u64;
            let dims = LoraDims {
                tokens: m,
                in_features: k,
                out_features: n,
                rank: r,
            };
            let (s, kx) = (1.75f32, k + r);
            let x = normal_f32(seed, m * k);
            let w = normal_f32(seed + 1, n * k);
            let a = normal_f32(seed + 2, r * k);
            let b = normal_f32(seed + 3, n * r);
            let dy = normal_f32(seed + 4, m * n);
            let mask = keep_mask(seed + 5, m * k, 1.0 - f64::from(p));
            let params = LoraParams {
                scale: s,
                dropout: p,
                keep_mask: (p > 0.0).then_some(&mask[..]),
            };
            let want_f = lora::forward(dims, &x, &w, &a, &b, params).unwrap();
            let want_b = lora::backward(dims, &x, &w, &a, &b, params, &want_f.h, &dy).unwrap();
            let dropout = (p > 0.0).then_some(p);
            let plan = plan(dims, s, dropout, accumulate);
            let f = 1.0 / (1.0 - f64::from(p));
            let keep = |i: usize| if p > 0.0 { f64::from(mask[i]) } else { 1.0 };

            // x_ext = [x | s h], h = f (mask x) A^T (what lora_bf16_mma + lora_splitk_reduce write).
            let mut x_ext = vec![f64::NAN; m * kx];
            for i in 0..m {
                for j in 0..k {
                    x_ext[i * kx + j] = f64::from(x[i * k + j]);
                }
                for q in 0..r {
                    let h: f64 = (0..k)
                        .map(|j| {
                            keep(i * k + j) * f64::from(x[i * k + j]) * f64::from(a[q * k + j])
                        })
                        .sum();
                    x_ext[i * kx + k + q] = f64::from(s) * f * h;
                }
            }
            // W_ext = [W | B] (nf4_dequantize_bf16_ld + lora_copy_rows_u16).
            let mut w_ext = vec![f64::NAN; n * kx];
            for i in 0..n {
                for j in 0..k {
                    w_ext[i * kx + j] = f64::from(w[i * k + j]);
                }
                for q in 0..r {
                    w_ext[i * kx + k + q] = f64::from(b[i * r + q]);
                }
            }
            let mut y = vec![f64::NAN; m * n];
            exec(&plan.forward, &x_ext, &w_ext, &mut y);
            close("y", &y, &want_f.y);

            let dyw = wide(&dy);
            let mut dx_ext = vec![f64::NAN; m * kx];
            exec(&plan.dx, &dyw, &w_ext, &mut dx_ext);
            // Gradient buffers: poisoned when overwritten, holding earlier sums when accumulating.
            let (da0, db0) = if accumulate {
                (
                    wide(&normal_f32(seed + 6, r * k)),
                    wide(&normal_f32(seed + 7, n * r)),
                )
            } else {
                (vec![f64::NAN; r * k], vec![f64::NAN; n * r])
            };
            let (mut da, mut db) = (da0.clone(), db0.clone());
            exec(&plan.db, &dyw, &x_ext, &mut db);
            let a_w = wide(&a);
            if p > 0.0 {
                // lora_mask_rows_bf16, the products into t, then lora_masked_add_bf16 (alpha 1).
                let x_masked: Vec<f64> = (0..m * k).map(|i| keep(i) * f64::from(x[i])).collect();
                let mut t = vec![f64::NAN; m * k];
                exec(&plan.dx_adapter, &dx_ext, &a_w, &mut t);
                exec(&plan.da, &dx_ext, &x_masked, &mut da);
                for i in 0..m {
                    for j in 0..k {
                        if mask[i * k + j] != 0 {
                            dx_ext[i * kx + j] += t[i * k + j];
                        }
                    }
                }
            } else {
                let g = dx_ext.clone();
                exec(&plan.dx_adapter, &g, &a_w, &mut dx_ext);
                exec(&plan.da, &dx_ext, &x_ext, &mut da);
            }
            let dx: Vec<f64> = (0..m)
                .flat_map(|i| dx_ext[i * kx..i * kx + k].to_vec())
                .collect();
            close("dx", &dx, &want_b.dx);
            let minus = |got: &[f64], base: &[f64]| -> Vec<f64> {
                if accumulate {
                    got.iter().zip(base).map(|(g, b0)| g - b0).collect()
                } else {
                    got.to_vec()
                }
            };
            close("dA", &minus(&da, &da0), &want_b.da);
            close("dB", &minus(&db, &db0), &want_b.db);
        }
    }

    #[test]
    fn the_plan_keeps_every_operand_inside_the_extended_buffers() {
        // LLaMA-3.1-8B down projection, r = 64, with dropout.
        let dims = LoraDims {
            tokens: 2048,
            in_features: 14336,
            out_features: 4096,
            rank: 64,
        };
        let p = plan(dims, 2.0, Some(0.05), false);
        let kx = 14336 + 64;
        for (what, prod, [a_len, b_len, c_len]) in [
            ("forward", p.forward, [2048 * kx, 4096 * kx, 2048 * 4096]),
            ("dx", p.dx, [2048 * 4096, 4096 * kx, 2048 * kx]),
            (
                "dx adapter",
                p.dx_adapter,
                [2048 * kx, 64 * 14336, 2048 * 14336],
            ),
            ("dB", p.db, [2048 * 4096, 2048 * kx, 4096 * 64]),
            ("dA", p.da, [2048 * kx, 2048 * 14336, 64 * 14336]),
        ] {
            prod.gemm.check().unwrap();
            let [la, lb, lc] = prod.gemm.lens();
            assert!(prod.a_offset + la <= a_len, "{what}: A");
            assert!(prod.b_offset + lb <= b_len, "{what}: B");
            assert!(prod.c_offset + lc <= c_len, "{what}: C");
        }
        assert_eq!(
            p.forward.gemm.k, kx,
            "the adapter rides in the base GEMM's K"
        );
    }
}
