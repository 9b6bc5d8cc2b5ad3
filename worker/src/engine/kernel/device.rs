//! The op set the kernel engine is written against: one trait, implemented by the CPU references of
//! `tandem-kernels` ([`super::reference::Reference`], what CI runs) and by the CUDA kernels. Every operation
//! takes its sizes explicitly, so an implementation never has to keep shapes beside its buffers.

use tandem_kernels::lora::LoraDims;
use tandem_kernels::ops::attention::{AttentionDims, CachedDims};

use crate::engine::error::Result;

/// An adapter as a device holds it: `A` (`r x in`), `B` (`out x r`), the scale `alpha / r` and the dropout
/// probability.
#[derive(Debug)]
pub struct Adapter<B> {
    pub a: B,
    pub b: B,
    pub rank: usize,
    pub scale: f32,
    pub dropout: f32,
}

/// The gradients of one adapter.
#[derive(Debug)]
pub struct AdapterGrads<B> {
    pub da: B,
    pub db: B,
}

/// What [`Device::linear_backward`] returns: `dx`, and the adapter's gradients when the layer has one.
pub type LinearGrads<B> = (B, Option<AdapterGrads<B>>);

/// Cross-entropy of a chunk of rows: the summed loss of counted rows and their count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkLoss {
    pub loss_sum: f64,
    pub count: usize,
}

/// A device the kernel engine runs on. Buffers are row-major f32 values (activations, adapters, gradients);
/// `Frozen` is a frozen linear weight `out x in` as the device keeps it (dense or NF4); `Mask` a dropout keep
/// mask (0 or 1 per element).
pub trait Device: Send + Sync + 'static {
    type Buf: Send + Sync;
    type Frozen: Send + Sync;
    type Mask: Send + Sync;

    /// What the device is, for logs and errors (`"reference (CPU)"`, `"cuda:0 NVIDIA H100"`).
    fn describe(&self) -> String;

    fn upload(&self, values: &[f32]) -> Result<Self::Buf>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Values held by a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;

    /// A frozen weight `rows x cols` from host values, quantised to NF4 with double quantisation when `nf4`
    /// (bitsandbytes' format, the same codes on every device).
    fn frozen(&self, values: &[f32], rows: usize, cols: usize, nf4: bool) -> Result<Self::Frozen>;
    /// Bytes the device holds for a frozen weight.
    fn frozen_bytes(&self, w: &Self::Frozen) -> usize;

    /// Rows `ids` of `table` (`vocab x dim`).
    fn embedding(
        &self,
        table: &Self::Buf,
        vocab: usize,
        dim: usize,
        ids: &[u32],
    ) -> Result<Self::Buf>;
    /// RMSNorm of `rows x dim`; returns `y` and each row's `1 / rms`.
    fn rmsnorm(
        &self,
        x: &Self::Buf,
        rows: usize,
        dim: usize,
        weight: &Self::Buf,
        eps: f32,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// The input gradient of [`Device::rmsnorm`] (the norm's weight is frozen).
    fn rmsnorm_backward(
        &self,
        x: &Self::Buf,
        rows: usize,
        dim: usize,
        weight: &Self::Buf,
        rstd: &Self::Buf,
        dy: &Self::Buf,
    ) -> Result<Self::Buf>;
    /// Rotary embedding (rotate-half layout) of `tokens x heads x head_dim` at `positions`; `sign = -1` is the
    /// inverse rotation, the backward.
    #[allow(clippy::too_many_arguments)]
    fn rope(
        &self,
        x: &Self::Buf,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        sign: f32,
    ) -> Result<Self::Buf>;
    /// Causal grouped-query attention over whole sequences.
    fn attention(
        &self,
        dims: AttentionDims,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
    ) -> Result<Self::Buf>;
    /// `(dq, dk, dv)` of [`Device::attention`].
    fn attention_backward(
        &self,
        dims: AttentionDims,
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
        dout: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf, Self::Buf)>;
    /// Attention of new queries (`rows x new x q_heads x head_dim`) against cached keys and values
    /// (`rows x (past + new) x kv_heads x head_dim`), causal and blind to each row's left padding.
    fn attention_cached(
        &self,
        dims: CachedDims,
        pad: &[usize],
        q: &Self::Buf,
        k: &Self::Buf,
        v: &Self::Buf,
    ) -> Result<Self::Buf>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Self::Buf, up: &Self::Buf) -> Result<Self::Buf>;
    /// `(dgate, dup)` of [`Device::swiglu`].
    fn swiglu_backward(
        &self,
        gate: &Self::Buf,
        up: &Self::Buf,
        dy: &Self::Buf,
    ) -> Result<(Self::Buf, Self::Buf)>;
    /// `a + b`.
    fn add(&self, a: &Self::Buf, b: &Self::Buf) -> Result<Self::Buf>;

    /// The dropout keep mask of `n` elements of stream `stream` (`tandem_kernels::dropout`, the same bits on
    /// every device).
    fn keep_mask(&self, seed: u64, stream: u64, n: usize, p: f32) -> Result<Self::Mask>;
    /// A linear layer: `x W^T`, plus `scale * (dropout(x) A^T) B^T` with an adapter. Returns `y` and, with an
    /// adapter, `h = dropout(x) A^T` for the backward.
    fn linear(
        &self,
        dims: LoraDims,
        x: &Self::Buf,
        w: &Self::Frozen,
        adapter: Option<&Adapter<Self::Buf>>,
        mask: Option<&Self::Mask>,
    ) -> Result<(Self::Buf, Option<Self::Buf>)>;
    /// The backward of [`Device::linear`]: `dx`, and the adapter's gradients when it has one.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dims: LoraDims,
        x: &Self::Buf,
        w: &Self::Frozen,
        adapter: Option<&Adapter<Self::Buf>>,
        mask: Option<&Self::Mask>,
        h: Option<&Self::Buf>,
        dy: &Self::Buf,
    ) -> Result<LinearGrads<Self::Buf>>;
    /// `x W^T` for `x` of `rows x cols(W)` and a dense `W` (`n x k`), the LM head.
    fn matmul_nt(
        &self,
        x: &Self::Buf,
        rows: usize,
        w: &Self::Buf,
        n: usize,
        k: usize,
    ) -> Result<Self::Buf>;
    /// `dy W` for `dy` of `rows x n` and a dense `W` (`n x k`): the LM head's input gradient.
    fn matmul_nn(
        &self,
        dy: &Self::Buf,
        rows: usize,
        w: &Self::Buf,
        n: usize,
        k: usize,
    ) -> Result<Self::Buf>;
    /// Cross-entropy of `rows x vocab` logits against `targets` (`-100` ignored), and the logits' gradient of
    /// `scale * loss_sum`.
    fn cross_entropy(
        &self,
        logits: &Self::Buf,
        rows: usize,
        vocab: usize,
        targets: &[i32],
        scale: f32,
    ) -> Result<(ChunkLoss, Self::Buf)>;

    /// Rows `rows` (each `width` values) of `x`, in that order: gathering counted tokens, reordering beams.
    fn gather_rows(&self, x: &Self::Buf, width: usize, rows: &[usize]) -> Result<Self::Buf>;
    /// `total_rows x width` zeros with row `rows[i]` set to row `i` of `x`: the inverse of
    /// [`Device::gather_rows`] for distinct rows.
    fn scatter_rows(
        &self,
        x: &Self::Buf,
        width: usize,
        rows: &[usize],
        total_rows: usize,
    ) -> Result<Self::Buf>;
    /// Appends along the sequence: `old` is `rows x old_len x width`, `new` is `rows x new_len x width`.
    fn append_seq(
        &self,
        old: Option<&Self::Buf>,
        new: &Self::Buf,
        rows: usize,
        old_len: usize,
        new_len: usize,
        width: usize,
    ) -> Result<Self::Buf>;
}
