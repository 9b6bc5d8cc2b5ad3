//! The LoRA layer's forward with bf16 activations on the tensor cores (`lora_bf16_mma` in `kernels/cuda/lora.cu`):
//! `y = x W^T + s (dropout(x) A^T) B^T` with x, A, B and y in bf16 and fp32 accumulation. The base product goes
//! through the per-shape NF4 GEMM choice ([`super::gemm_choice::Nf4Gemm`]); the adapter adds two small mma.sync
//! products: `h = dropout(x) A^T` (split over K, summed in a fixed order, kept in fp32 for the backward and in bf16)
//! and `y += s h B^T`, read-modify-write on y. Checked against `crate::lora` (fp32) at the bf16 tolerance.

use cudarc::driver::{CudaSlice, CudaViewMut, LaunchConfig, PushKernelArg};

use super::compile::LORA;
use super::device::{Gpu, blocks_for, cuda_err, i32_of, need};
use super::gemm_choice::{Nf4Gemm, Nf4GemmPath};
use super::lora::check_w;
use super::nf4::GpuNf4;
use crate::error::KernelError;
use crate::lora::LoraDims;

/// Rows and columns of C per block of `lora_bf16_mma` (`LBM`, `LBN`), and its K step (`LBK`).
const TILE_M: usize = 64;
const TILE_N: usize = 32;
const TILE_K: usize = 32;
/// Blocks the down-projection aims for (split over K until there are about this many); a constant, not the
/// device's SM count, so the summation order, and the bits, do not depend on the device.
const TARGET_BLOCKS: usize = 256;

/// How `h = x A^T` (`m x n`, inner size `k`) is split over K: `(splits, kchunk)`, `kchunk` a multiple of 32 and
/// `splits = ceil(k / kchunk)`; depends on the sizes alone.
pub fn split_k(m: usize, n: usize, k: usize) -> (usize, usize) {
    let tiles = m.div_ceil(TILE_M) * n.div_ceil(TILE_N);
    let steps = k.div_ceil(TILE_K).max(1);
    let want = TARGET_BLOCKS.div_ceil(tiles.max(1)).clamp(1, steps);
    let kchunk = steps.div_ceil(want) * TILE_K;
    (k.div_ceil(kchunk).max(1), kchunk)
}

/// Device buffers of one LoRA layer with bf16 parameters (raw bf16 bits) and this step's dropout.
pub struct GpuLoraBf16<'a> {
    /// Sizes; `in_features` and `rank` must be multiples of 8 (16-byte loads).
    pub dims: LoraDims,
    /// `r x in`, bf16.
    pub a: &'a CudaSlice<u16>,
    /// `out x r`, bf16.
    pub b: &'a CudaSlice<u16>,
    /// `alpha / r`.
    pub scale: f32,
    /// Dropout probability and keep mask (`tokens x in`, 0 or 1), or `None`.
    pub dropout: Option<(f32, &'a CudaSlice<u8>)>,
}

/// Scratch and outputs of the adapter besides y.
pub struct AdapterBuffers<'a> {
    /// `h = dropout(x) A^T`, `tokens x r`, fp32 (what the backward needs).
    pub h: &'a mut CudaSlice<f32>,
    /// The same in bf16 (the up-projection's input).
    pub h_bf16: &'a mut CudaSlice<u16>,
    /// At least [`GpuLoraBf16::partial_len`] floats: the split-K partial sums.
    pub partial: &'a mut CudaSlice<f32>,
}

impl GpuLoraBf16<'_> {
    /// Floats of split-K scratch the adapter needs.
    pub fn partial_len(&self) -> usize {
        let d = self.dims;
        split_k(d.tokens, d.rank, d.in_features).0 * d.tokens * d.rank
    }

    pub(crate) fn check(&self) -> Result<(), KernelError> {
        let d = self.dims;
        if d.tokens == 0 || d.rank == 0 || d.out_features == 0 || d.in_features == 0 {
            return Err(KernelError::invalid(
                "dims",
                format!("{d:?}: every size must be at least 1"),
            ));
        }
        if !d.in_features.is_multiple_of(8) || !d.rank.is_multiple_of(8) {
            return Err(KernelError::invalid(
                "dims",
                format!(
                    "in_features {} and rank {} must be multiples of 8 for the bf16 tensor-core path \
                     (the fp32 path, cuda::lora::GpuLora, takes any size)",
                    d.in_features, d.rank
                ),
            ));
        }
        need("a", self.a, d.rank * d.in_features)?;
        need("b", self.b, d.out_features * d.rank)?;
        if let Some((p, mask)) = self.dropout {
            if !(0.0..1.0).contains(&p) {
                return Err(KernelError::invalid(
                    "dropout",
                    format!("{p}: must be in [0, 1)"),
                ));
            }
            need("dropout mask", mask, d.tokens * d.in_features)?;
        }
        Ok(())
    }

    /// The adapter alone: `h = dropout(x) A^T` into `bufs`, then `y += s h B^T` on the bf16 `y` (`tokens x out`)
    /// that already holds the base product.
    pub fn adapter_forward(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<u16>,
        bufs: AdapterBuffers<'_>,
        y: &mut CudaSlice<u16>,
    ) -> Result<(), KernelError> {
        self.check()?;
        let LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        } = self.dims;
        need("x", x, m * k)?;
        need("y", y, m * n)?;
        need("h_bf16", bufs.h_bf16, m * r)?;
        self.down_partial(gpu, x, k, bufs.partial)?;
        let mut h16 = bufs.h_bf16.slice_mut(..);
        self.down_reduce(gpu, bufs.partial, bufs.h, &mut h16, r, 1.0)?;

        // y += s h B^T: M = tokens, N = out, K = r, one split, read-modify-write on y.
        let f = gpu.function(&LORA, "lora_bf16_mma")?;
        let (mi, ni, ri) = (
            i32_of(m, "tokens")?,
            i32_of(n, "out_features")?,
            i32_of(r, "rank")?,
        );
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(TILE_N) as u32, m.div_ceil(TILE_M) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kc, mode1, no_mask) = (i32_of(r.div_ceil(TILE_K) * TILE_K, "rank")?, 1i32, 0i32);
        let mut l = gpu.stream().launch_builder(&f);
        // Mode 1 without a mask reads neither the mask nor `partial`: B and the split-K scratch stand in for
        // them, so nothing is allocated per call.
        l.arg(&mi)
            .arg(&ni)
            .arg(&ri)
            .arg(&*bufs.h_bf16)
            .arg(&ri)
            .arg(self.b)
            .arg(&ri)
            .arg(&no_mask);
        l.arg(self.b).arg(&ri).arg(&kc).arg(&mode1).arg(&self.scale);
        l.arg(&*bufs.partial).arg(y).arg(&ni);
        // SAFETY: matches lora_bf16_mma; h_bf16 is m x r, B is n x r (ld r), y is m x n (ld n); the mask and
        // partial arguments are not dereferenced in mode 1 with has_mask = 0.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_bf16_mma (up)"))?;
        Ok(())
    }

    /// `h = dropout(x) A^T` (x: `tokens x in`, rows `ldx` apart) on the tensor cores, split over K: the
    /// splits' sums into `partial`; [`GpuLoraBf16::down_reduce`] adds them up.
    pub(crate) fn down_partial(
        &self,
        gpu: &Gpu,
        x: &CudaSlice<u16>,
        ldx: usize,
        partial: &mut CudaSlice<f32>,
    ) -> Result<(), KernelError> {
        let LoraDims {
            tokens: m,
            in_features: k,
            rank: r,
            ..
        } = self.dims;
        need("x", x, (m - 1) * ldx + k)?;
        need("partial", partial, self.partial_len())?;
        if !ldx.is_multiple_of(8) {
            return Err(KernelError::invalid(
                "x",
                format!("row stride {ldx} must be a multiple of 8 (16-byte loads)"),
            ));
        }
        let f = gpu.function(&LORA, "lora_bf16_mma")?;
        let has_mask = i32::from(self.dropout.is_some());
        let (mi, ki, ri, ldxi) = (
            i32_of(m, "tokens")?,
            i32_of(k, "in_features")?,
            i32_of(r, "rank")?,
            i32_of(ldx, "x row stride")?,
        );
        // M = tokens, N = r, K = in, split over K; the mask is dense (`tokens x in`, rows k apart).
        let (splits, kchunk) = split_k(m, r, k);
        let cfg = LaunchConfig {
            grid_dim: (
                r.div_ceil(TILE_N) as u32,
                m.div_ceil(TILE_M) as u32,
                splits as u32,
            ),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kc, mode0, one) = (i32_of(kchunk, "kchunk")?, 0i32, 1.0f32);
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mi).arg(&ri).arg(&ki).arg(x).arg(&ldxi);
        // Without dropout the mask is never read (has_mask = 0) and mode 0 never writes Y: x stands in for both,
        // so nothing is allocated per call.
        match self.dropout {
            Some((_, mask)) => l.arg(mask),
            None => l.arg(x),
        };
        l.arg(&ki).arg(&has_mask);
        l.arg(self.a).arg(&ki).arg(&kc).arg(&mode0).arg(&one);
        l.arg(&mut *partial).arg(x).arg(&ri);
        // SAFETY: matches lora_bf16_mma; x is m rows of k values ldx apart, A is r x k (ld k), partial holds
        // splits * m * r floats; the stand-ins for the mask (without dropout) and Y (mode 0) are not
        // dereferenced.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_bf16_mma (down)"))?;
        Ok(())
    }

    /// Sums [`GpuLoraBf16::down_partial`]'s splits in a fixed order: `h` (fp32, `tokens x r`, dense, times
    /// 1 / (1 - p)) and `scale16 * h` in bf16 into `h16`, rows `ld16` apart.
    pub(crate) fn down_reduce(
        &self,
        gpu: &Gpu,
        partial: &CudaSlice<f32>,
        h: &mut CudaSlice<f32>,
        h16: &mut CudaViewMut<'_, u16>,
        ld16: usize,
        scale16: f32,
    ) -> Result<(), KernelError> {
        let LoraDims {
            tokens: m,
            in_features: k,
            rank: r,
            ..
        } = self.dims;
        need("h", h, m * r)?;
        need("partial", partial, self.partial_len())?;
        if h16.len() < (m - 1) * ld16 + r {
            return Err(KernelError::invalid(
                "h_bf16",
                format!(
                    "{} elements, rows {ld16} apart need {}",
                    h16.len(),
                    (m - 1) * ld16 + r
                ),
            ));
        }
        let factor = self.dropout.map_or(1.0f32, |(p, _)| 1.0 / (1.0 - p));
        let reduce = gpu.function(&LORA, "lora_splitk_reduce")?;
        let (splits, _) = split_k(m, r, k);
        let (splits_i, count, ri, ld16_i) = (
            i32_of(splits, "splits")?,
            (m * r) as i64,
            i32_of(r, "rank")?,
            ld16 as i64,
        );
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(m * r, 256).min(4096), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream().launch_builder(&reduce);
        l.arg(partial).arg(&splits_i).arg(&count).arg(&factor);
        l.arg(&mut *h).arg(h16).arg(&ri).arg(&ld16_i).arg(&scale16);
        // SAFETY: matches lora_splitk_reduce; partial holds splits * m * r floats, h m * r, h16 m rows of r
        // values ld16 apart (checked above).
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_splitk_reduce"))?;
        Ok(())
    }

    /// The whole forward: `y = x W^T` through `gemm`'s per-shape choice (`w_scratch`: at least `out x in` bf16
    /// values, used by the dequantise + cuBLAS path), then the adapter. Returns the base path taken.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        gemm: &Nf4Gemm,
        x: &CudaSlice<u16>,
        w: &GpuNf4,
        w_scratch: &mut CudaSlice<u16>,
        bufs: AdapterBuffers<'_>,
        y: &mut CudaSlice<u16>,
    ) -> Result<Nf4GemmPath, KernelError> {
        self.check()?;
        let d = self.dims;
        check_w(w, &d)?;
        let path = gemm.xwt(gpu, d.tokens, x, w, w_scratch, y)?;
        self.adapter_forward(gpu, x, bufs, y)?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_k_covers_k_in_whole_tiles_and_depends_on_sizes_alone() {
        // LLaMA q projection, r = 32, 2048 tokens: 32 tiles, so 8 splits of 512.
        assert_eq!(split_k(2048, 32, 4096), (8, 512));
        // Few tokens: as many splits as 32-wide K steps allow, up to 256 blocks.
        assert_eq!(split_k(1, 32, 4096), (128, 32));
        // Plenty of tiles already: one split.
        assert_eq!(split_k(65_536, 32, 4096), (1, 4096));
        for &(m, n, k) in &[(7usize, 8usize, 8usize), (100, 64, 1000), (2048, 32, 14336)] {
            let (splits, kchunk) = split_k(m, n, k);
            assert_eq!(kchunk % 32, 0, "{m} {n} {k}");
            assert!(
                splits * kchunk >= k && (splits - 1) * kchunk < k,
                "{m} {n} {k}"
            );
        }
    }
}
