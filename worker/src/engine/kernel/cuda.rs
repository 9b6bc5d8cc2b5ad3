//! The CUDA device of the kernel engine: every operation of [`Device`] on one GPU, through the fp32 launchers of
//! `tandem_kernels::cuda` and the engine's own small kernels (`cuda::engine_ops`). **It has not run on a GPU yet**:
//! it compiles and its host-side checks run on the CPU; `worker/tests/gpu_engine.rs` (ignored, run by
//! `kernels/gpu-check.sh`) compares it with the candle CPU engine where a GPU is.
//!
//! - Every kernel goes on the GPU's one stream in call order, so an operation sees the results of the ones before
//!   it; reading back (`download`, the loss) waits for the stream.
//! - Products run in fp32 on the tiled `gemm_f32` kernel (through `GpuLora` when the layer has an adapter): one
//!   fixed summation order, so the same inputs give the same bits. cuBLAS is not used: its wrapper takes bf16.
//! - An NF4 weight is quantised on the GPU (`GpuNf4::quantize`, the CPU reference's codes bit for bit) and
//!   dequantised, before each product, into an fp32 scratch buffer of exactly its size, one per distinct size and
//!   reused (no allocation per call once each size has been seen; a scratch larger than the weight would fail the
//!   products' exact shape checks).
//! - Attention runs the flash kernels up to head size 128 and the naive ones beyond (whose backward sums with
//!   atomics, so its last bits may change from run to run).
//! - The device holds no empty buffer: an operation whose result would have 0 values is an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use tandem_kernels::KernelError;
use tandem_kernels::cuda::engine_ops::{self, SeqDims};
use tandem_kernels::cuda::lora::{GpuLora, Operand, gemm_f32};
use tandem_kernels::cuda::nf4::GpuNf4;
use tandem_kernels::cuda::{Gpu, attention as flash, ops};
use tandem_kernels::lora::LoraDims;
use tandem_kernels::nf4::Nf4Tensor;
use tandem_kernels::ops::attention::{AttentionDims, CachedDims};
use tandem_kernels::ops::check_len;
use tandem_kernels::ops::cross_entropy::check_targets;
use tandem_kernels::ops::embedding::check_ids;

use super::device::{Adapter, AdapterGrads, ChunkLoss, Device, LinearGrads};
use crate::engine::error::{EngineError, Result};

/// The ignore index of the loss's targets (PyTorch's).
const IGNORE: i32 = -100;

/// A GPU as a kernel-engine device.
pub struct Cuda {
    gpu: Arc<Gpu>,
    label: String,
    /// The dequantised copy of an NF4 weight, shared by every NF4 layer.
    /// One buffer per NF4 weight size (a LLaMA has four: q/o, k/v, gate/up, down), so every product gets a
    /// weight of exactly its shape and no call allocates once each size has been seen.
    scratch: Mutex<HashMap<usize, CudaSlice<f32>>>,
}

/// A frozen weight on the GPU: dense fp32, or NF4 with double quantisation.
pub enum CudaFrozen {
    Dense(CudaSlice<f32>),
    Nf4(Box<GpuNf4>),
}

/// One operation's name and shapes, for its errors.
struct At<'a> {
    device: &'a str,
    op: &'static str,
    shapes: String,
}

impl At<'_> {
    fn error(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::kernel(self.op, self.device, self.shapes.clone(), message)
    }

    fn err(&self) -> impl Fn(KernelError) -> EngineError + '_ {
        move |e| self.error(e)
    }

    /// `got` values where `rows x cols` are expected, or an error naming `what`.
    fn len(&self, what: &'static str, got: usize, rows: usize, cols: usize) -> Result<()> {
        check_len(what, got, rows, cols).map_err(self.err())
    }
}

impl Cuda {
    /// Opens CUDA device `ordinal`; the error says why it cannot be used (no driver, no NVRTC, no such device, older
    /// than sm_80).
    pub fn new(ordinal: usize) -> Result<Cuda> {
        let gpu = Gpu::open(ordinal)
            .map_err(|e| EngineError::kernel("open", format!("cuda:{ordinal}"), "-", e))?;
        Ok(Cuda {
            label: format!("cuda:{} {}", gpu.ordinal(), gpu.name()),
            gpu,
            scratch: Mutex::new(HashMap::new()),
        })
    }

    /// The GPU this device runs on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The NF4 tensor of a frozen weight, copied back (`None` for a dense one): for checking the GPU's codes.
    pub fn nf4_of(&self, w: &CudaFrozen) -> Result<Option<Nf4Tensor>> {
        let at = self.at("nf4_download", format!("{} bytes", self.frozen_bytes(w)));
        match w {
            CudaFrozen::Dense(_) => Ok(None),
            CudaFrozen::Nf4(q) => q.download(&self.gpu).map(Some).map_err(at.err()),
        }
    }

    fn at(&self, op: &'static str, shapes: String) -> At<'_> {
        At {
            device: &self.label,
            op,
            shapes,
        }
    }

    /// A zeroed buffer of `n` values (`n` at least 1).
    fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, at: &At, n: usize) -> Result<CudaSlice<T>> {
        if n == 0 {
            return Err(
                at.error("the result would be empty; the CUDA device holds no empty buffer")
            );
        }
        self.gpu.zeros(n).map_err(at.err())
    }

    /// `x W^T` for `x` of `m x k` and `W` of `n x k`, or, with `back`, `x W` for `x` of `m x n`: a frozen
    /// product, forward or backward, into a new buffer.
    fn frozen_product(
        &self,
        at: &At,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        (m, n, k): (usize, usize, usize),
        back: bool,
    ) -> Result<CudaSlice<f32>> {
        let (inner, outer) = if back { (n, k) } else { (k, n) };
        at.len("x", x.len(), m, inner)?;
        at.len("w", w.len(), n, k)?;
        let mut c = self.zeros(at, m * outer)?;
        let (a, b) = (Operand::new(x, inner, false), Operand::new(w, k, !back));
        gemm_f32(&self.gpu, m, outer, inner, a, b, 1.0, 0.0, &mut c, None).map_err(at.err())?;
        Ok(c)
    }

    /// Runs `f` on the dense fp32 values of `w` (`rows x cols`): its own buffer, or the NF4 weight dequantised into
    /// the device's scratch (held for the call).
    fn with_dense<T>(
        &self,
        at: &At,
        w: &CudaFrozen,
        (rows, cols): (usize, usize),
        f: impl FnOnce(&CudaSlice<f32>) -> Result<T>,
    ) -> Result<T> {
        let q = match w {
            CudaFrozen::Dense(d) => {
                at.len("w", d.len(), rows, cols)?;
                return f(d);
            }
            CudaFrozen::Nf4(q) => q,
        };
        if (q.rows(), q.cols()) != (rows, cols) {
            return Err(at.error(format!(
                "w: NF4 weight is {}x{}, expected {rows}x{cols}",
                q.rows(),
                q.cols()
            )));
        }
        let mut buffers = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let scratch = match buffers.entry(q.len()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.zeros(at, q.len())?),
        };
        q.dequantize_f32(&self.gpu, scratch).map_err(at.err())?;
        f(scratch)
    }

    /// Causal attention's output and log-sum-exp: the flash kernel up to head size 128, the naive one beyond.
    fn attention_out(
        &self,
        at: &At,
        d: AttentionDims,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let rows = d.batch * d.tokens;
        at.len("q", q.len(), rows, d.q_heads * d.head_dim)?;
        at.len("k", k.len(), rows, d.kv_heads * d.head_dim)?;
        at.len("v", v.len(), rows, d.kv_heads * d.head_dim)?;
        let mut out = self.zeros(at, q.len())?;
        let mut lse = self.zeros(at, rows * d.q_heads)?;
        if d.head_dim <= flash::MAX_HEAD_DIM {
            flash::forward(&self.gpu, d, q, k, v, &mut out, &mut lse)
        } else {
            ops::attention_forward_naive(&self.gpu, d, q, k, v, &mut out, &mut lse)
        }
        .map_err(at.err())?;
        Ok((out, lse))
    }
}

/// The fp32 LoRA layer of the kernels crate over a device adapter.
fn gpu_lora<'a>(
    dims: LoraDims,
    ad: &'a Adapter<CudaSlice<f32>>,
    mask: Option<&'a CudaSlice<u8>>,
) -> GpuLora<'a> {
    GpuLora {
        dims,
        a: &ad.a,
        b: &ad.b,
        scale: ad.scale,
        dropout: mask.map(|m| (ad.dropout, m)),
    }
}

/// An adapter's and its mask's sizes fit `dims`.
fn check_adapter(
    at: &At,
    dims: &LoraDims,
    ad: &Adapter<CudaSlice<f32>>,
    mask: Option<&CudaSlice<u8>>,
) -> Result<()> {
    at.len("A", ad.a.len(), dims.rank, dims.in_features)?;
    at.len("B", ad.b.len(), dims.out_features, dims.rank)?;
    match mask {
        Some(m) => at.len("mask", m.len(), dims.tokens, dims.in_features),
        None => Ok(()),
    }
}

impl Device for Cuda {
    type Buf = CudaSlice<f32>;
    type Frozen = CudaFrozen;
    type Mask = CudaSlice<u8>;

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn upload(&self, values: &[f32]) -> Result<CudaSlice<f32>> {
        let at = self.at("upload", format!("{} values", values.len()));
        if values.is_empty() {
            return Err(at.error("nothing to upload; the CUDA device holds no empty buffer"));
        }
        self.gpu.upload(values).map_err(at.err())
    }

    fn download(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        let at = self.at("download", format!("{} values", buf.len()));
        self.gpu.download(buf).map_err(at.err())
    }

    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn frozen(&self, values: &[f32], rows: usize, cols: usize, nf4: bool) -> Result<CudaFrozen> {
        let at = self.at("frozen", format!("{rows}x{cols}"));
        at.len("weight", values.len(), rows, cols)?;
        if !nf4 {
            return Ok(CudaFrozen::Dense(self.upload(values)?));
        }
        let at = self.at("nf4_quantize", format!("{rows}x{cols}"));
        // The CPU reference refuses NaN and infinity; the kernel's absmax (fmaxf) would skip a NaN.
        KernelError::check_finite("weights", values).map_err(at.err())?;
        let dense = self.upload(values)?;
        let q = GpuNf4::quantize(&self.gpu, &dense, rows, cols, true).map_err(at.err())?;
        Ok(CudaFrozen::Nf4(Box::new(q)))
    }

    fn frozen_bytes(&self, w: &CudaFrozen) -> usize {
        match w {
            CudaFrozen::Dense(d) => d.len() * 4,
            CudaFrozen::Nf4(q) => q.bytes(),
        }
    }

    fn embedding(
        &self,
        table: &CudaSlice<f32>,
        vocab: usize,
        dim: usize,
        ids: &[u32],
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("embedding", format!("{vocab}x{dim}, {} ids", ids.len()));
        at.len("table", table.len(), vocab, dim)?;
        check_ids(ids, vocab).map_err(at.err())?;
        let mut out = self.zeros(&at, ids.len() * dim)?;
        let ids_dev = self.gpu.upload(ids).map_err(at.err())?;
        ops::embedding_forward(&self.gpu, table, &ids_dev, ids.len(), dim, &mut out)
            .map_err(at.err())?;
        Ok(out)
    }

    fn rmsnorm(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        weight: &CudaSlice<f32>,
        eps: f32,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let at = self.at("rmsnorm", format!("{rows}x{dim}"));
        at.len("x", x.len(), rows, dim)?;
        at.len("weight", weight.len(), dim, 1)?;
        let mut y = self.zeros(&at, rows * dim)?;
        let mut rstd = self.zeros(&at, rows)?;
        ops::rmsnorm_forward(&self.gpu, x, weight, rows, dim, eps, &mut y, &mut rstd)
            .map_err(at.err())?;
        Ok((y, rstd))
    }

    fn rmsnorm_backward(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        dim: usize,
        weight: &CudaSlice<f32>,
        rstd: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("rmsnorm_backward", format!("{rows}x{dim}"));
        at.len("x", x.len(), rows, dim)?;
        at.len("dy", dy.len(), rows, dim)?;
        at.len("weight", weight.len(), dim, 1)?;
        at.len("rstd", rstd.len(), rows, 1)?;
        let mut dx = self.zeros(&at, rows * dim)?;
        ops::rmsnorm_backward_dx(&self.gpu, x, weight, rstd, dy, rows, dim, &mut dx)
            .map_err(at.err())?;
        Ok(dx)
    }

    fn rope(
        &self,
        x: &CudaSlice<f32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        sign: f32,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("rope", format!("{tokens}x{heads}x{head_dim}"));
        at.len("x", x.len(), tokens, heads * head_dim)?;
        at.len("positions", positions.len(), tokens, 1)?;
        at.len("inv_freq", inv_freq.len(), head_dim / 2, 1)?;
        if !head_dim.is_multiple_of(2) {
            return Err(at.error(format!("head_dim {head_dim} is odd")));
        }
        let mut out = self.zeros(&at, x.len())?;
        let pos = self.gpu.upload(positions).map_err(at.err())?;
        let freq = self.gpu.upload(inv_freq).map_err(at.err())?;
        ops::rope(
            &self.gpu, x, &pos, &freq, tokens, heads, head_dim, sign, &mut out,
        )
        .map_err(at.err())?;
        Ok(out)
    }

    fn attention(
        &self,
        dims: AttentionDims,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("attention", format!("{dims:?}"));
        Ok(self.attention_out(&at, dims, q, k, v)?.0)
    }

    fn attention_backward(
        &self,
        dims: AttentionDims,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        dout: &CudaSlice<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>, CudaSlice<f32>)> {
        let at = self.at("attention_backward", format!("{dims:?}"));
        at.len("dout", dout.len(), q.len(), 1)?;
        let (out, lse) = self.attention_out(&at, dims, q, k, v)?;
        let mut dq = self.zeros(&at, q.len())?;
        let mut dk = self.zeros(&at, k.len())?;
        let mut dv = self.zeros(&at, v.len())?;
        let g = &self.gpu;
        if dims.head_dim <= flash::MAX_HEAD_DIM {
            flash::backward(
                g, dims, q, k, v, &out, &lse, dout, &mut dq, &mut dk, &mut dv,
            )
        } else {
            ops::attention_backward_naive(
                g, dims, q, k, v, &out, &lse, dout, &mut dq, &mut dk, &mut dv,
            )
        }
        .map_err(at.err())?;
        Ok((dq, dk, dv))
    }

    fn attention_cached(
        &self,
        dims: CachedDims,
        pad: &[usize],
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("attention_cached", format!("{dims:?}"));
        let cached = dims.rows * (dims.past + dims.new);
        at.len(
            "q",
            q.len(),
            dims.rows * dims.new,
            dims.q_heads * dims.head_dim,
        )?;
        at.len("k", k.len(), cached, dims.kv_heads * dims.head_dim)?;
        at.len("v", v.len(), cached, dims.kv_heads * dims.head_dim)?;
        let mut out = self.zeros(&at, q.len())?;
        engine_ops::attention_cached(&self.gpu, dims, pad, q, k, v, &mut out).map_err(at.err())?;
        Ok(out)
    }

    fn swiglu(&self, gate: &CudaSlice<f32>, up: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let at = self.at("swiglu", format!("{} values", gate.len()));
        at.len("up", up.len(), gate.len(), 1)?;
        let mut y = self.zeros(&at, gate.len())?;
        ops::swiglu_forward(&self.gpu, gate, up, gate.len(), &mut y).map_err(at.err())?;
        Ok(y)
    }

    fn swiglu_backward(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
    ) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let n = gate.len();
        let at = self.at("swiglu_backward", format!("{n} values"));
        at.len("up", up.len(), n, 1)?;
        at.len("dy", dy.len(), n, 1)?;
        let mut dgate = self.zeros(&at, n)?;
        let mut dup = self.zeros(&at, n)?;
        ops::swiglu_backward(&self.gpu, gate, up, dy, n, &mut dgate, &mut dup).map_err(at.err())?;
        Ok((dgate, dup))
    }

    fn add(&self, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        let at = self.at("add", format!("{} values", a.len()));
        at.len("b", b.len(), a.len(), 1)?;
        let mut out = self.zeros(&at, a.len())?;
        engine_ops::add(&self.gpu, a, b, a.len(), &mut out).map_err(at.err())?;
        Ok(out)
    }

    fn keep_mask(&self, seed: u64, stream: u64, n: usize, p: f32) -> Result<CudaSlice<u8>> {
        let at = self.at("dropout_keep_mask", format!("{n}"));
        let mut out = self.zeros(&at, n)?;
        ops::dropout_keep_mask(&self.gpu, seed, stream, p, n, &mut out).map_err(at.err())?;
        Ok(out)
    }

    fn linear(
        &self,
        dims: LoraDims,
        x: &CudaSlice<f32>,
        w: &CudaFrozen,
        adapter: Option<&Adapter<CudaSlice<f32>>>,
        mask: Option<&CudaSlice<u8>>,
    ) -> Result<(CudaSlice<f32>, Option<CudaSlice<f32>>)> {
        let (m, n, k) = (dims.tokens, dims.out_features, dims.in_features);
        let at = self.at("linear", format!("{dims:?}"));
        at.len("x", x.len(), m, k)?;
        let Some(ad) = adapter else {
            return self.with_dense(&at, w, (n, k), |wd| {
                Ok((self.frozen_product(&at, x, wd, (m, n, k), false)?, None))
            });
        };
        check_adapter(&at, &dims, ad, mask)?;
        let mut y = self.zeros(&at, m * n)?;
        let mut h = self.zeros(&at, m * dims.rank)?;
        self.with_dense(&at, w, (n, k), |wd| {
            gpu_lora(dims, ad, mask)
                .forward_dense(&self.gpu, x, wd, &mut h, &mut y)
                .map_err(at.err())
        })?;
        Ok((y, Some(h)))
    }

    fn linear_backward(
        &self,
        dims: LoraDims,
        x: &CudaSlice<f32>,
        w: &CudaFrozen,
        adapter: Option<&Adapter<CudaSlice<f32>>>,
        mask: Option<&CudaSlice<u8>>,
        h: Option<&CudaSlice<f32>>,
        dy: &CudaSlice<f32>,
    ) -> Result<LinearGrads<CudaSlice<f32>>> {
        let (m, n, k, r) = (dims.tokens, dims.out_features, dims.in_features, dims.rank);
        let at = self.at("linear_backward", format!("{dims:?}"));
        at.len("dy", dy.len(), m, n)?;
        let (Some(ad), Some(h)) = (adapter, h) else {
            return self.with_dense(&at, w, (n, k), |wd| {
                Ok((self.frozen_product(&at, dy, wd, (m, n, k), true)?, None))
            });
        };
        check_adapter(&at, &dims, ad, mask)?;
        at.len("x", x.len(), m, k)?;
        at.len("h", h.len(), m, r)?;
        let mut dx = self.zeros(&at, m * k)?;
        let mut dh = self.zeros(&at, m * r)?;
        let mut da = self.zeros(&at, r * k)?;
        let mut db = self.zeros(&at, n * r)?;
        self.with_dense(&at, w, (n, k), |wd| {
            gpu_lora(dims, ad, mask)
                .backward(&self.gpu, x, wd, h, dy, &mut dh, &mut da, &mut db, &mut dx)
                .map_err(at.err())
        })?;
        Ok((dx, Some(AdapterGrads { da, db })))
    }

    fn matmul_nt(
        &self,
        x: &CudaSlice<f32>,
        rows: usize,
        w: &CudaSlice<f32>,
        n: usize,
        k: usize,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("matmul_nt", format!("{rows}x{k} by {n}x{k}"));
        self.frozen_product(&at, x, w, (rows, n, k), false)
    }

    fn matmul_nn(
        &self,
        dy: &CudaSlice<f32>,
        rows: usize,
        w: &CudaSlice<f32>,
        n: usize,
        k: usize,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("matmul_nn", format!("{rows}x{n} by {n}x{k}"));
        self.frozen_product(&at, dy, w, (rows, n, k), true)
    }

    fn cross_entropy(
        &self,
        logits: &CudaSlice<f32>,
        rows: usize,
        vocab: usize,
        targets: &[i32],
        scale: f32,
    ) -> Result<(ChunkLoss, CudaSlice<f32>)> {
        let at = self.at("cross_entropy", format!("{rows}x{vocab}"));
        at.len("logits", logits.len(), rows, vocab)?;
        at.len("targets", targets.len(), rows, 1)?;
        check_targets(targets, vocab, IGNORE).map_err(at.err())?;
        let g = &self.gpu;
        let t = g.upload(targets).map_err(at.err())?;
        let mut lse = self.zeros(&at, rows)?;
        let mut row_loss = self.zeros(&at, rows)?;
        ops::cross_entropy_forward(g, logits, &t, rows, vocab, IGNORE, &mut lse, &mut row_loss)
            .map_err(at.err())?;
        let mut dlogits = self.zeros(&at, rows * vocab)?;
        ops::cross_entropy_backward(
            g,
            logits,
            &t,
            &lse,
            rows,
            vocab,
            IGNORE,
            scale,
            &mut dlogits,
        )
        .map_err(at.err())?;
        // Ignored rows hold a loss of 0: summing every row in order is the sum over the counted ones.
        let losses = g.download(&row_loss).map_err(at.err())?;
        let loss = ChunkLoss {
            loss_sum: losses.iter().map(|&l| f64::from(l)).sum(),
            count: targets.iter().filter(|&&t| t != IGNORE).count(),
        };
        Ok((loss, dlogits))
    }

    fn gather_rows(
        &self,
        x: &CudaSlice<f32>,
        width: usize,
        rows: &[usize],
    ) -> Result<CudaSlice<f32>> {
        let at = self.at(
            "gather_rows",
            format!("{} rows of {width}", x.len() / width.max(1)),
        );
        let mut out = self.zeros(&at, rows.len() * width)?;
        engine_ops::gather_rows(&self.gpu, x, width, rows, &mut out).map_err(at.err())?;
        Ok(out)
    }

    fn scatter_rows(
        &self,
        x: &CudaSlice<f32>,
        width: usize,
        rows: &[usize],
        total_rows: usize,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at("scatter_rows", format!("{total_rows} rows of {width}"));
        at.len("x", x.len(), rows.len(), width)?;
        let mut out = self.zeros(&at, total_rows * width)?;
        engine_ops::scatter_rows(&self.gpu, x, width, rows, total_rows, &mut out)
            .map_err(at.err())?;
        Ok(out)
    }

    fn append_seq(
        &self,
        old: Option<&CudaSlice<f32>>,
        new: &CudaSlice<f32>,
        rows: usize,
        old_len: usize,
        new_len: usize,
        width: usize,
    ) -> Result<CudaSlice<f32>> {
        let at = self.at(
            "append_seq",
            format!("{rows} rows of {old_len} + {new_len} x {width}"),
        );
        at.len("new", new.len(), rows * new_len, width)?;
        at.len("old", old.map_or(0, |o| o.len()), rows * old_len, width)?;
        let mut out = self.zeros(&at, rows * (old_len + new_len) * width)?;
        let d = SeqDims {
            rows,
            old_len,
            new_len,
            width,
        };
        engine_ops::append_seq(&self.gpu, old, new, d, &mut out).map_err(at.err())?;
        Ok(out)
    }
}
