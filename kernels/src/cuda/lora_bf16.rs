//! The LoRA layer's forward with bf16 activations on the tensor cores (`lora_bf16_mma` in `kernels/cuda/lora.cu`):
//! `y = x W^T + s (dropout(x) A^T) B^T` with x, A, B and y in bf16 and fp32 accumulation. The base product goes
//! through the per-shape NF4 GEMM choice ([`super::gemm_choice::Nf4Gemm`]); the adapter adds two small mma.sync
//! products: `h = dropout(x) A^T` (split over K, summed in a fixed order, kept in fp32 for the backward and in bf16)
//! and `y += s h B^T`, read-modify-write on y. Checked against `crate::lora` (fp32) at the bf16 tolerance.

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::compile::LORA;
use super::device::{Gpu, blocks_for, cuda_err};
use super::gemm_choice::{Nf4Gemm, Nf4GemmPath};
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

fn need<T>(what: &'static str, buf: &CudaSlice<T>, len: usize) -> Result<(), KernelError> {
    if buf.len() >= len {
        Ok(())
    } else {
        Err(KernelError::invalid(
            what,
            format!("device buffer of {} elements, needs {len}", buf.len()),
        ))
    }
}

fn to_i32(v: usize, what: &'static str) -> Result<i32, KernelError> {
    i32::try_from(v).map_err(|_| KernelError::invalid(what, format!("{v} does not fit in i32")))
}

impl GpuLoraBf16<'_> {
    /// Floats of split-K scratch the adapter needs.
    pub fn partial_len(&self) -> usize {
        let d = self.dims;
        split_k(d.tokens, d.rank, d.in_features).0 * d.tokens * d.rank
    }

    fn check(&self) -> Result<(), KernelError> {
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
        need("h", bufs.h, m * r)?;
        need("h_bf16", bufs.h_bf16, m * r)?;
        need("partial", bufs.partial, self.partial_len())?;
        let f = gpu.function(&LORA, "lora_bf16_mma")?;
        let dummy: CudaSlice<u8>;
        let (mask, has_mask, factor) = match self.dropout {
            Some((p, mask)) => (mask, 1i32, 1.0 / (1.0 - p)),
            None => {
                dummy = gpu.zeros(1)?;
                (&dummy, 0i32, 1.0f32)
            }
        };
        let (mi, ni, ki, ri) = (
            to_i32(m, "tokens")?,
            to_i32(n, "out_features")?,
            to_i32(k, "in_features")?,
            to_i32(r, "rank")?,
        );

        // h = dropout(x) A^T: M = tokens, N = r, K = in, split over K.
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
        let (kc, mode0, one) = (to_i32(kchunk, "kchunk")?, 0i32, 1.0f32);
        let dummy16: CudaSlice<u16> = gpu.zeros(1)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mi)
            .arg(&ri)
            .arg(&ki)
            .arg(x)
            .arg(&ki)
            .arg(mask)
            .arg(&has_mask);
        l.arg(self.a).arg(&ki).arg(&kc).arg(&mode0).arg(&one);
        l.arg(&mut *bufs.partial).arg(&dummy16).arg(&ri);
        // SAFETY: matches lora_bf16_mma; x is m x k, A is r x k (ld k), partial holds splits * m * r floats.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_bf16_mma (down)"))?;
        let reduce = gpu.function(&LORA, "lora_splitk_reduce")?;
        let (splits_i, count) = (to_i32(splits, "splits")?, (m * r) as i64);
        let cfg = LaunchConfig {
            grid_dim: (blocks_for(m * r, 256).min(4096), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream().launch_builder(&reduce);
        l.arg(&*bufs.partial)
            .arg(&splits_i)
            .arg(&count)
            .arg(&factor);
        l.arg(&mut *bufs.h).arg(&mut *bufs.h_bf16);
        // SAFETY: matches lora_splitk_reduce; partial holds splits * m * r floats, h and h_bf16 m * r values.
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_splitk_reduce"))?;

        // y += s h B^T: M = tokens, N = out, K = r, one split, read-modify-write on y.
        let cfg = LaunchConfig {
            grid_dim: (n.div_ceil(TILE_N) as u32, m.div_ceil(TILE_M) as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kc, mode1, no_mask) = (to_i32(r.div_ceil(TILE_K) * TILE_K, "rank")?, 1i32, 0i32);
        let dummy_partial: CudaSlice<f32> = gpu.zeros(1)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mi)
            .arg(&ni)
            .arg(&ri)
            .arg(&*bufs.h_bf16)
            .arg(&ri)
            .arg(mask)
            .arg(&no_mask);
        l.arg(self.b).arg(&ri).arg(&kc).arg(&mode1).arg(&self.scale);
        l.arg(&dummy_partial).arg(y).arg(&ni);
        // SAFETY: matches lora_bf16_mma; h_bf16 is m x r, B is n x r (ld r), y is m x n (ld n).
        unsafe { l.launch(cfg) }.map_err(cuda_err("launch lora_bf16_mma (up)"))?;
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
        if (w.rows(), w.cols()) != (d.out_features, d.in_features) {
            return Err(KernelError::invalid(
                "w",
                format!(
                    "NF4 weight is {}x{}, expected {}x{}",
                    w.rows(),
                    w.cols(),
                    d.out_features,
                    d.in_features
                ),
            ));
        }
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
