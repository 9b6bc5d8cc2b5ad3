//! Fused CPU operations of the LLaMA training step, each one candle op with a hand-written backward.
//!
//! Written as chains of candle's element-wise ops, RMSNorm, RoPE, SwiGLU, the masked attention softmax and the
//! token cross-entropy were several ops each: every op allocates its output, keeps its inputs alive in the
//! autograd graph until the backward pass, runs on one thread, and in the backward pass adds its gradient into
//! a fresh zero tensor. Profiled on SmolLM2-135M (batch 2 x 256), that serial bookkeeping took about half of a
//! training step while the GEMMs' second core sat idle. Here each is one op: one pass forward, one pass
//! backward, over rows split across rayon's threads. Every row is computed by one thread in a fixed order, so
//! the bits do not depend on the thread count.

use std::sync::{Arc, Mutex};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use super::error::{EngineError, Result};

/// Element count below which an op runs on the calling thread (scheduling would cost more than it saves).
const MIN_PARALLEL: usize = 1 << 15;

/// Runs `f(row, out_row)` over the rows of `out` (rows of `width`), split across rayon's threads when large.
fn for_rows(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if width == 0 {
        return;
    }
    if out.len() < MIN_PARALLEL || rayon::current_num_threads() < 2 {
        out.chunks_exact_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
        return;
    }
    let per_task = (MIN_PARALLEL / width).max(1);
    out.par_chunks_mut(per_task * width)
        .enumerate()
        .for_each(|(c, block)| {
            for (i, row) in block.chunks_exact_mut(width).enumerate() {
                f(c * per_task + i, row);
            }
        });
}

/// The contiguous f32 values of a CPU storage.
pub(crate) fn slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(values) = storage else {
        candle_core::bail!("{op}: expected f32 input")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous")
    };
    Ok(&values[start..end])
}

/// Calls `f` with the contiguous f32 values of a CPU tensor (copied only if it is not contiguous).
fn with_values<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: expected a CPU tensor")
    };
    f(slice(cpu, layout, op)?)
}

fn tensor(values: Vec<f32>, shape: &Shape) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

/// RMSNorm over the last dimension with a frozen weight: `y = x / sqrt(mean(x^2) + eps) * w`.
struct RmsNorm {
    eps: f64,
}

/// `1 / sqrt(mean(x^2) + eps)` of one row (the sum of squares in f64).
fn rstd(row: &[f32], eps: f64) -> f32 {
    let ss: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let denom = ((ss / row.len() as f64) as f32 + eps as f32).sqrt();
    1.0 / denom
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, self.name())?;
        let w = slice(s2, l2, self.name())?;
        let dim = w.len();
        if *l1.dims().last().unwrap_or(&0) != dim {
            candle_core::bail!("fused-rms-norm: {:?} rows, weight of {dim}", l1.dims())
        }
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, dim, |r, out| {
            let row = &x[r * dim..(r + 1) * dim];
            let rs = rstd(row, self.eps);
            for ((o, &v), &g) in out.iter_mut().zip(row).zip(w) {
                *o = v * rs * g;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let dx = with_values(x, name, |x| {
            with_values(w, name, |w| {
                with_values(dy, name, |dy| {
                    let dim = w.len();
                    let mut dx = vec![0f32; x.len()];
                    for_rows(&mut dx, dim, |r, out| {
                        let xr = &x[r * dim..(r + 1) * dim];
                        let dr = &dy[r * dim..(r + 1) * dim];
                        let rs = rstd(xr, self.eps);
                        let dot: f64 = (0..dim)
                            .map(|j| f64::from(dr[j] * w[j]) * f64::from(xr[j]))
                            .sum();
                        let c = (dot * f64::from(rs).powi(3) / dim as f64) as f32;
                        for j in 0..dim {
                            out[j] = rs * (dr[j] * w[j]) - c * xr[j];
                        }
                    });
                    Ok(dx)
                })
            })
        })?;
        Ok((Some(tensor(dx, x.shape())?), None))
    }
}

/// RMS norm over the last dimension, `x / sqrt(mean(x^2) + eps) * weight`, as one op; the weight is frozen
/// (no gradient).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = weight.contiguous()?;
    let op = RmsNorm { eps };
    if !x.track_op() {
        return Ok(x.apply_op2_no_bwd(&w, &op)?);
    }
    Ok(x.apply_op2(&w, op)?)
}

/// `silu(gate) * up`, LLaMA's MLP activation.
struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = slice(s1, l1, self.name())?;
        let u = slice(s2, l2, self.name())?;
        if g.len() != u.len() {
            candle_core::bail!("fused-swiglu: {:?} vs {:?}", l1.dims(), l2.dims())
        }
        let width = *l1.dims().last().unwrap_or(&1);
        let mut y = vec![0f32; g.len()];
        for_rows(&mut y, width.max(1), |r, out| {
            let at = r * out.len();
            for (i, o) in out.iter_mut().enumerate() {
                let gv = g[at + i];
                *o = gv / ((-gv).exp() + 1.0) * u[at + i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let width = gate.dims().last().copied().unwrap_or(1).max(1);
        let (dg, du) = with_values(gate, name, |g| {
            with_values(up, name, |u| {
                with_values(dy, name, |dy| {
                    // Both gradients in one buffer, row r's d(gate) then its d(up), so one pass fills both.
                    let mut both = vec![0f32; 2 * g.len()];
                    for_rows(&mut both, 2 * width, |r, out| {
                        let (og, ou) = out.split_at_mut(width);
                        let at = r * width;
                        for i in 0..width {
                            let gv = g[at + i];
                            let s = 1.0 / ((-gv).exp() + 1.0);
                            let d = dy[at + i];
                            og[i] = d * u[at + i] * (s * (1.0 + gv * (1.0 - s)));
                            ou[i] = d * (gv * s);
                        }
                    });
                    let mut dg = Vec::with_capacity(g.len());
                    let mut du = Vec::with_capacity(g.len());
                    for row in both.chunks_exact(2 * width) {
                        dg.extend_from_slice(&row[..width]);
                        du.extend_from_slice(&row[width..]);
                    }
                    Ok((dg, du))
                })
            })
        })?;
        Ok((
            Some(tensor(dg, gate.shape())?),
            Some(tensor(du, up.shape())?),
        ))
    }
}

/// `silu(gate) * up` as one op.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    if g.dims() != u.dims() {
        return Err(EngineError::Input(format!(
            "swiglu: gate {:?} and up {:?} differ",
            g.dims(),
            u.dims()
        )));
    }
    if !g.track_op() && !u.track_op() {
        return Ok(g.apply_op2_no_bwd(&u, &SwiGlu)?);
    }
    Ok(g.apply_op2(&u, SwiGlu)?)
}

/// Rotary embedding (Hugging Face's rotate-half layout) of `x` `[rows, heads, t, d]` with tables
/// `[rows, t, d / 2]`.
struct Rope {
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    heads: usize,
    t: usize,
}

/// RoPE of one head's row `x` (rotate-half layout) by angles with cosines `c` and sines `s`, into `out`;
/// `inverse` rotates by the opposite angles (the backward).
fn rotate_half(x: &[f32], out: &mut [f32], c: &[f32], s: &[f32], inverse: bool) {
    let half = c.len();
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = out.split_at_mut(half);
    for i in 0..half {
        if inverse {
            o1[i] = x1[i] * c[i] + x2[i] * s[i];
            o2[i] = x2[i] * c[i] - x1[i] * s[i];
        } else {
            o1[i] = x1[i] * c[i] - x2[i] * s[i];
            o2[i] = x2[i] * c[i] + x1[i] * s[i];
        }
    }
}

impl Rope {
    /// Rotates every row `[d]` of `x` by its position's angles; `inverse` rotates back (the backward).
    fn apply(&self, x: &[f32], d: usize, inverse: bool) -> Vec<f32> {
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, d, |r, out| {
            // Row r is (row, head, position); the tables are indexed by (row, position).
            let (pos, row) = (r % self.t, r / (self.t * self.heads));
            let table = (row * self.t + pos) * half;
            let (c, s) = (
                &self.cos[table..table + half],
                &self.sin[table..table + half],
            );
            rotate_half(&x[r * d..(r + 1) * d], out, c, s, inverse);
        });
        y
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let d = *layout.dims().last().unwrap_or(&0);
        if d == 0 || !d.is_multiple_of(2) || x.len() / d * (d / 2) != self.cos.len() * self.heads {
            candle_core::bail!(
                "fused-rope: {:?} against tables of {}",
                layout.dims(),
                self.cos.len()
            )
        }
        Ok((
            CpuStorage::F32(self.apply(x, d, false)),
            layout.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let d = arg.dims().last().copied().unwrap_or(0);
        let dx = with_values(grad_res, self.name(), |g| Ok(self.apply(g, d, true)))?;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// Rotary embedding of `x` `[rows, heads, t, d]` with the angles' `cos` and `sin` `[rows, t, d / 2]`.
pub fn rope(x: &Tensor, cos: &Arc<Vec<f32>>, sin: &Arc<Vec<f32>>) -> Result<Tensor> {
    let (_, heads, t, _) = x.dims4()?;
    let x = x.contiguous()?;
    let op = Rope {
        cos: Arc::clone(cos),
        sin: Arc::clone(sin),
        heads,
        t,
    };
    if !x.track_op() {
        return Ok(x.apply_op1_no_bwd(&op)?);
    }
    Ok(x.apply_op1(op)?)
}

/// Replaces `row` by its softmax (stable: the maximum subtracted first; sums in f32, in order).
pub fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Attention probabilities `softmax(scores * scale + mask)` over the last dimension of `scores`
/// `[rows, groups, t, s]` with an additive mask `[rows, t, s]` shared by the groups.
struct MaskedSoftmax {
    scale: f32,
    mask: Option<Arc<Vec<f32>>>,
    /// Rows of `scores` per batch row (`groups * t`) and the query length `t`.
    per_row: usize,
    t: usize,
}

impl MaskedSoftmax {
    /// The probabilities of scores `x` (rows of `s`).
    fn forward(&self, x: &[f32], s: usize) -> Vec<f32> {
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, s.max(1), |r, out| {
            let row = &x[r * s..(r + 1) * s];
            match &self.mask {
                Some(m) => {
                    let at = ((r / self.per_row) * self.t + r % self.t) * s;
                    for ((o, &v), &mv) in out.iter_mut().zip(row).zip(&m[at..at + s]) {
                        *o = v * self.scale + mv;
                    }
                }
                None => {
                    for (o, &v) in out.iter_mut().zip(row) {
                        *o = v * self.scale;
                    }
                }
            }
            softmax_in_place(out);
        });
        y
    }

    /// The scores' gradient from the probabilities `y` and their gradient `dy`:
    /// `scale * y * (dy - sum(dy * y))` per row.
    fn backward(&self, y: &[f32], dy: &[f32], s: usize) -> Vec<f32> {
        let mut dx = vec![0f32; y.len()];
        for_rows(&mut dx, s.max(1), |r, out| {
            let (yr, dr) = (&y[r * s..(r + 1) * s], &dy[r * s..(r + 1) * s]);
            let dot: f32 = yr.iter().zip(dr).map(|(a, b)| a * b).sum();
            for ((o, &yv), &dv) in out.iter_mut().zip(yr).zip(dr) {
                *o = (dv - dot) * yv * self.scale;
            }
        });
        dx
    }
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let s = *layout.dims().last().unwrap_or(&0);
        if let Some(m) = &self.mask
            && x.len() / s.max(1) / self.per_row.max(1) * self.t * s != m.len()
        {
            candle_core::bail!(
                "fused-masked-softmax: scores {:?}, mask of {}",
                layout.dims(),
                m.len()
            )
        }
        Ok((CpuStorage::F32(self.forward(x, s)), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let name = self.name();
        let s = res.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_values(res, name, |y| {
            with_values(grad_res, name, |dy| Ok(self.backward(y, dy, s)))
        })?;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// `softmax(scores * scale + mask)` over the last dimension as one op (only the probabilities are kept for the
/// backward). `scores` is `[rows, groups, t, s]`; `mask`, when given, is the additive mask `[rows, t, s]`
/// (row-major) that every group of a row shares.
pub fn masked_softmax(scores: &Tensor, scale: f64, mask: Option<&Arc<Vec<f32>>>) -> Result<Tensor> {
    let (_, groups, t, _) = scores.dims4()?;
    let x = scores.contiguous()?;
    let op = MaskedSoftmax {
        scale: scale as f32,
        mask: mask.cloned(),
        per_row: groups * t,
        t,
    };
    if !x.track_op() {
        return Ok(x.apply_op1_no_bwd(&op)?);
    }
    Ok(x.apply_op1(op)?)
}

/// The shapes of one attention call: `rows` sequences of `t` positions, `heads` query heads sharing
/// `kv_heads` key/value heads (grouped-query attention), `d` values per head.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub rows: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub d: usize,
}

/// Causal self-attention of a whole sequence from the projections' outputs `q` `[rows, t, heads * d]`, `k`
/// and `v` `[rows, t, kv_heads * d]` to `[rows, t, heads * d]`: RoPE on q and k, the scores, the masked
/// softmax, the value product, and the layout changes between them, as one autograd node. The products are
/// candle's (the same calls, shapes and order as the separate ops, so the forward values are theirs); only the
/// probabilities are kept for the backward, which recomputes the rotated q, k and the head-major v.
struct Attention {
    shape: AttentionShape,
    softmax: MaskedSoftmax,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    probs: Mutex<Option<Tensor>>,
}

/// How [`to_heads`] and [`to_tokens`] treat the rows they move.
#[derive(Clone, Copy, PartialEq)]
enum Rotation {
    None,
    Rope,
    Inverse,
}

impl Attention {
    /// `x` `[rows, t, heads, d]` (row-major) as `[rows, heads, t, d]`, rotated by RoPE when asked.
    fn to_heads(&self, x: &[f32], heads: usize, rot: Rotation) -> Vec<f32> {
        let AttentionShape { t, d, .. } = self.shape;
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, d, |r, out| {
            let (b, h, i) = (r / (heads * t), (r / t) % heads, r % t);
            let src = &x[((b * t + i) * heads + h) * d..][..d];
            self.rotate(src, out, b, i, rot);
        });
        y
    }

    /// `x` `[rows, heads, t, d]` back to `[rows, t, heads, d]`, rotated when asked.
    fn to_tokens(&self, x: &[f32], heads: usize, rot: Rotation) -> Vec<f32> {
        let AttentionShape { t, d, .. } = self.shape;
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, d, |r, out| {
            let (b, i, h) = (r / (t * heads), (r / heads) % t, r % heads);
            let src = &x[((b * heads + h) * t + i) * d..][..d];
            self.rotate(src, out, b, i, rot);
        });
        y
    }

    /// One head's row at position `i` of sequence `b`, copied or rotated (as [`Rope`]).
    fn rotate(&self, src: &[f32], out: &mut [f32], b: usize, i: usize, rot: Rotation) {
        let half = self.shape.d / 2;
        if rot == Rotation::None {
            out.copy_from_slice(src);
            return;
        }
        let table = (b * self.shape.t + i) * half;
        let (c, s) = (
            &self.cos[table..table + half],
            &self.sin[table..table + half],
        );
        rotate_half(src, out, c, s, rot == Rotation::Inverse);
    }

    /// The rotated q `[rows, kv_heads, rep * t, d]`, rotated k and v `[rows, kv_heads, t, d]` as tensors.
    fn operands(&self, q: &[f32], k: &[f32], v: &[f32]) -> candle_core::Result<[Tensor; 3]> {
        let AttentionShape {
            rows,
            t,
            heads,
            kv_heads,
            d,
        } = self.shape;
        let rep = heads / kv_heads;
        let dev = &Device::Cpu;
        Ok([
            Tensor::from_vec(
                self.to_heads(q, heads, Rotation::Rope),
                (rows, kv_heads, rep * t, d),
                dev,
            )?,
            Tensor::from_vec(
                self.to_heads(k, kv_heads, Rotation::Rope),
                (rows, kv_heads, t, d),
                dev,
            )?,
            Tensor::from_vec(
                self.to_heads(v, kv_heads, Rotation::None),
                (rows, kv_heads, t, d),
                dev,
            )?,
        ])
    }
}

/// The values of a contiguous f32 CPU tensor, copied out.
pub(crate) fn values_of(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (q, k, v) = (
            slice(s1, l1, name)?,
            slice(s2, l2, name)?,
            slice(s3, l3, name)?,
        );
        let AttentionShape {
            rows,
            t,
            heads,
            kv_heads,
            d,
        } = self.shape;
        if q.len() != rows * t * heads * d
            || k.len() != rows * t * kv_heads * d
            || v.len() != k.len()
            || self.cos.len() != rows * t * (d / 2)
        {
            candle_core::bail!(
                "fused-attention: q {:?}, k {:?}, v {:?} for {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims(),
                self.shape
            )
        }
        let [qr, kr, vh] = self.operands(q, k, v)?;
        let scores = values_of(&qr.matmul(&kr.t()?)?)?;
        let probs = Tensor::from_vec(
            self.softmax.forward(&scores, t),
            (rows, kv_heads, heads / kv_heads * t, t),
            &Device::Cpu,
        )?;
        let out = values_of(&probs.matmul(&vh)?)?;
        *self.probs.lock().expect("probs lock") = Some(probs);
        Ok((
            CpuStorage::F32(self.to_tokens(&out, heads, Rotation::None)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let name = self.name();
        let AttentionShape {
            rows,
            t,
            heads,
            kv_heads,
            d,
        } = self.shape;
        let rep = heads / kv_heads;
        let probs = self
            .probs
            .lock()
            .expect("probs lock")
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("fused-attention: no forward ran".into()))?;
        let [qr, kr, vh] = with_values(q, name, |q| {
            with_values(k, name, |k| {
                with_values(v, name, |v| self.operands(q, k, v))
            })
        })?;
        let dout = with_values(dy, name, |g| Ok(self.to_heads(g, heads, Rotation::None)))?;
        let dout = Tensor::from_vec(dout, (rows, kv_heads, rep * t, d), &Device::Cpu)?;
        let dv = values_of(&probs.t()?.matmul(&dout)?)?;
        let dprobs = values_of(&dout.matmul(&vh.t()?)?)?;
        let dscores = with_values(&probs, name, |p| Ok(self.softmax.backward(p, &dprobs, t)))?;
        let dscores = Tensor::from_vec(dscores, probs.shape(), &Device::Cpu)?;
        let dq = values_of(&dscores.matmul(&kr)?)?;
        let dk = values_of(&dscores.t()?.matmul(&qr)?)?;
        Ok((
            Some(tensor(
                self.to_tokens(&dq, heads, Rotation::Inverse),
                q.shape(),
            )?),
            Some(tensor(
                self.to_tokens(&dk, kv_heads, Rotation::Inverse),
                k.shape(),
            )?),
            Some(tensor(
                self.to_tokens(&dv, kv_heads, Rotation::None),
                v.shape(),
            )?),
        ))
    }
}

/// Causal self-attention over whole sequences (no cache) as one op; see [`Attention`]. `q` is
/// `[rows, t, heads * d]`, `k` and `v` `[rows, t, kv_heads * d]`; `cos` and `sin` are the RoPE tables
/// `[rows, t, d / 2]`, `mask` the additive mask `[rows, t, t]`. Returns `[rows, t, heads * d]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shape: AttentionShape,
    scale: f64,
    cos: &Arc<Vec<f32>>,
    sin: &Arc<Vec<f32>>,
    mask: Option<&Arc<Vec<f32>>>,
) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = Attention {
        shape,
        softmax: MaskedSoftmax {
            scale: scale as f32,
            mask: mask.cloned(),
            per_row: shape.heads * shape.t,
            t: shape.t,
        },
        cos: Arc::clone(cos),
        sin: Arc::clone(sin),
        probs: Mutex::new(None),
    };
    if !q.track_op() && !k.track_op() && !v.track_op() {
        return Ok(q.apply_op3_no_bwd(&k, &v, &op)?);
    }
    Ok(q.apply_op3(&k, &v, op)?)
}

/// Sum over rows of `-log softmax(logits)[target]` for logits `[n, vocab]`, every row counted.
struct CrossEntropy {
    targets: Vec<u32>,
    /// Each row's log-sum-exp, kept by the forward for the backward.
    lse: Mutex<Vec<f32>>,
}

/// `log(sum(exp(row)))`, stable (the sum of exponentials in f64).
fn log_sum_exp(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
    (sum.ln() as f32) + max
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, self.name())?;
        let vocab = *layout.dims().last().unwrap_or(&1);
        let n = self.targets.len();
        if x.len() != n * vocab {
            candle_core::bail!(
                "fused-cross-entropy: logits {:?} for {n} targets",
                layout.dims()
            )
        }
        let lse: Vec<f32> = if n * vocab >= MIN_PARALLEL && rayon::current_num_threads() > 1 {
            x.par_chunks_exact(vocab).map(log_sum_exp).collect()
        } else {
            x.chunks_exact(vocab).map(log_sum_exp).collect()
        };
        let total: f64 = lse
            .iter()
            .zip(&self.targets)
            .enumerate()
            .map(|(r, (&l, &t))| f64::from(l - x[r * vocab + t as usize]))
            .sum();
        *self.lse.lock().expect("lse lock") = lse;
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let g = grad_res.to_scalar::<f32>()?;
        let vocab = arg.dims().last().copied().unwrap_or(1).max(1);
        let lse = self.lse.lock().expect("lse lock").clone();
        let dx = with_values(arg, self.name(), |x| {
            let mut dx = vec![0f32; x.len()];
            for_rows(&mut dx, vocab, |r, out| {
                let row = &x[r * vocab..(r + 1) * vocab];
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = (v - lse[r]).exp() * g;
                }
                out[self.targets[r] as usize] -= g;
            });
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, arg.shape())?))
    }
}

/// Sum over positions of `-log softmax(logits)[label]` for labels >= 0, as one op; `logits` is `[n, vocab]`,
/// labels `< 0` (the -100 convention) are ignored. Returns the scalar sum and the number of counted tokens.
pub fn cross_entropy_sum(logits: &Tensor, labels: &[i64]) -> Result<(Tensor, usize)> {
    let (n, vocab) = logits.dims2()?;
    debug_assert_eq!(n, labels.len());
    let keep: Vec<u32> = (0..n as u32).filter(|&i| labels[i as usize] >= 0).collect();
    if keep.is_empty() {
        return Ok((Tensor::zeros((), candle_core::DType::F32, &Device::Cpu)?, 0));
    }
    let targets: Vec<u32> = keep.iter().map(|&i| labels[i as usize] as u32).collect();
    if let Some(bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(EngineError::Input(format!(
            "label token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let rows = if keep.len() == n {
        logits.contiguous()?
    } else {
        logits.index_select(&Tensor::new(keep.as_slice(), &Device::Cpu)?, 0)?
    };
    let op = CrossEntropy {
        targets,
        lse: Mutex::new(Vec::new()),
    };
    let sum = if rows.track_op() {
        rows.apply_op1(op)?
    } else {
        rows.apply_op1_no_bwd(&op)?
    };
    Ok((sum, keep.len()))
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Var};

    use super::*;
    use crate::engine::ops;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(seed.wrapping_mul(40_503));
                ((h >> 8) as f32 / (1u32 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn var(shape: &[usize], seed: u32) -> Var {
        let n = shape.iter().product();
        Var::from_tensor(&Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Forward values and the gradients of `sum(out * probe)` of a fused op against the chain of candle ops
    /// it replaces.
    fn check(
        inputs: &[Var],
        fused: impl Fn(&[Tensor]) -> Tensor,
        slow: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
        what: &str,
    ) {
        let ts: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (fused(&ts), slow(&ts));
        assert_close(&flat(&a), &flat(&b), tol, what);
        let probe = Tensor::from_vec(values(a.elem_count(), 99), a.shape(), &Device::Cpu).unwrap();
        let ga = (a * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in inputs.iter().enumerate() {
            let (x, y) = (
                ga.get(v.as_tensor()).expect("fused gradient"),
                gb.get(v.as_tensor()).expect("slow gradient"),
            );
            assert_close(&flat(x), &flat(y), tol, &format!("{what} d(input {i})"));
        }
    }

    fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn rms_norm_matches_the_op_chain() {
        // Large enough to take the parallel path.
        let x = var(&[3, 50, 700], 1);
        let w = Tensor::from_vec(values(700, 2), 700, &Device::Cpu).unwrap();
        check(
            &[x],
            |t| rms_norm(&t[0], &w, 1e-5).unwrap(),
            |t| ops::rms_norm(&t[0], &w, 1e-5).unwrap(),
            1e-5,
            "rms_norm",
        );
    }

    #[test]
    fn swiglu_matches_the_op_chain() {
        let (g, u) = (var(&[2, 40, 600], 3), var(&[2, 40, 600], 4));
        check(
            &[g, u],
            |t| swiglu(&t[0], &t[1]).unwrap(),
            |t| (ops::silu(&t[0]).unwrap() * &t[1]).unwrap(),
            1e-5,
            "swiglu",
        );
    }

    /// The rotate-half RoPE as candle ops (the engine's former code).
    fn rope_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.dim(D::Minus1).unwrap() / 2;
        let x1 = x.narrow(D::Minus1, 0, half).unwrap();
        let x2 = x.narrow(D::Minus1, half, half).unwrap();
        let a = (x1.broadcast_mul(cos).unwrap() - x2.broadcast_mul(sin).unwrap()).unwrap();
        let b = (x2.broadcast_mul(cos).unwrap() + x1.broadcast_mul(sin).unwrap()).unwrap();
        Tensor::cat(&[&a, &b], D::Minus1).unwrap()
    }

    #[test]
    fn rope_matches_the_op_chain_and_its_inverse_is_the_backward() {
        let (rows, heads, t, d) = (2, 3, 70, 64);
        let x = var(&[rows, heads, t, d], 5);
        let angles = values(rows * t * d / 2, 6);
        let cos: Vec<f32> = angles.iter().map(|a| (a * 3.0).cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| (a * 3.0).sin()).collect();
        let shape = (rows, 1, t, d / 2);
        let (ct, st) = (
            Tensor::from_vec(cos.clone(), shape, &Device::Cpu).unwrap(),
            Tensor::from_vec(sin.clone(), shape, &Device::Cpu).unwrap(),
        );
        let (cos, sin) = (Arc::new(cos), Arc::new(sin));
        check(
            &[x],
            |t| rope(&t[0], &cos, &sin).unwrap(),
            |t| rope_slow(&t[0], &ct, &st),
            1e-6,
            "rope",
        );
    }

    #[test]
    fn masked_softmax_matches_the_op_chain_with_and_without_a_mask() {
        let (rows, groups, t, s) = (2, 3, 40, 50);
        let x = var(&[rows, groups, t, s], 7);
        let mask: Vec<f32> = (0..rows * t * s)
            .map(|i| if (i * 7) % 5 == 0 { -1e30 } else { 0.0 })
            .collect();
        let mask_t = Tensor::from_vec(mask.clone(), (rows, 1, 1, t, s), &Device::Cpu).unwrap();
        let mask = Arc::new(mask);
        let scale = 0.125;
        check(
            std::slice::from_ref(&x),
            |t| masked_softmax(&t[0], scale, Some(&mask)).unwrap(),
            |ts| {
                let scaled = (&ts[0] * scale).unwrap();
                let masked = scaled
                    .reshape((rows, 1, groups, t, s))
                    .unwrap()
                    .broadcast_add(&mask_t)
                    .unwrap()
                    .reshape((rows, groups, t, s))
                    .unwrap();
                ops::softmax_last_slow(&masked).unwrap()
            },
            1e-5,
            "masked softmax",
        );
        check(
            &[x],
            |t| masked_softmax(&t[0], scale, None).unwrap(),
            |t| ops::softmax_last_slow(&(&t[0] * scale).unwrap()).unwrap(),
            1e-5,
            "softmax",
        );
    }

    #[test]
    fn attention_matches_the_op_chain() {
        let shape = AttentionShape {
            rows: 2,
            t: 9,
            heads: 6,
            kv_heads: 2,
            d: 8,
        };
        let AttentionShape {
            rows,
            t,
            heads,
            kv_heads,
            d,
        } = shape;
        let rep = heads / kv_heads;
        let (q, k, v) = (
            var(&[rows, t, heads * d], 11),
            var(&[rows, t, kv_heads * d], 12),
            var(&[rows, t, kv_heads * d], 13),
        );
        let angles = values(rows * t * d / 2, 14);
        let cos = Arc::new(angles.iter().map(|a| a.cos()).collect::<Vec<_>>());
        let sin = Arc::new(angles.iter().map(|a| a.sin()).collect::<Vec<_>>());
        // Causal, with the first two positions of the second row masked (left padding).
        let mask: Vec<f32> = (0..rows * t * t)
            .map(|n| {
                let (b, i, j) = (n / (t * t), (n / t) % t, n % t);
                if j > i || (b == 1 && j < 2) {
                    -1e30
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Arc::new(mask);
        let scale = 0.3;
        let heads_of = |x: &Tensor, n: usize| {
            x.reshape((rows, t, n, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        check(
            &[q, k, v],
            |ts| {
                attention(
                    &ts[0],
                    &ts[1],
                    &ts[2],
                    shape,
                    scale,
                    &cos,
                    &sin,
                    Some(&mask),
                )
                .unwrap()
            },
            |ts| {
                let qr = rope(&heads_of(&ts[0], heads), &cos, &sin).unwrap();
                let kr = rope(&heads_of(&ts[1], kv_heads), &cos, &sin).unwrap();
                let vh = heads_of(&ts[2], kv_heads);
                let scores = qr
                    .reshape((rows, kv_heads, rep * t, d))
                    .unwrap()
                    .matmul(&kr.t().unwrap())
                    .unwrap()
                    .reshape((rows, heads, t, t))
                    .unwrap();
                masked_softmax(&scores, scale, Some(&mask))
                    .unwrap()
                    .reshape((rows, kv_heads, rep * t, t))
                    .unwrap()
                    .matmul(&vh)
                    .unwrap()
                    .reshape((rows, heads, t, d))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((rows, t, heads * d))
                    .unwrap()
            },
            1e-5,
            "attention",
        );
    }

    #[test]
    fn cross_entropy_matches_the_op_chain_and_skips_ignored_labels() {
        let (n, vocab) = (9, 5000);
        let logits = var(&[n, vocab], 8);
        let labels: Vec<i64> = (0..n as i64)
            .map(|i| {
                if i % 4 == 1 {
                    -100
                } else {
                    i * 331 % vocab as i64
                }
            })
            .collect();
        let (fused, count) = cross_entropy_sum(logits.as_tensor(), &labels).unwrap();
        let (slow, slow_count) = ops::cross_entropy_sum(logits.as_tensor(), &labels).unwrap();
        assert_eq!(count, slow_count);
        assert_close(&flat(&fused), &flat(&slow), 1e-5, "loss");
        let ga = (fused * 0.5).unwrap().backward().unwrap();
        let gb = (slow * 0.5).unwrap().backward().unwrap();
        assert_close(
            &flat(ga.get(logits.as_tensor()).unwrap()),
            &flat(gb.get(logits.as_tensor()).unwrap()),
            1e-5,
            "d(logits)",
        );
        let bad = cross_entropy_sum(logits.as_tensor(), &[vocab as i64; 9]).unwrap_err();
        assert!(bad.to_string().contains("outside the vocabulary"), "{bad}");
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let run = || {
            let x = var(&[4, 30, 600], 9);
            let w = Tensor::from_vec(values(600, 10), 600, &Device::Cpu).unwrap();
            let y = rms_norm(x.as_tensor(), &w, 1e-6).unwrap();
            let z = swiglu(&y, &y.sqr().unwrap()).unwrap();
            let p = masked_softmax(&z.reshape((4, 2, 15, 600)).unwrap(), 0.3, None).unwrap();
            let (l, _) = cross_entropy_sum(
                &p.reshape((120, 600)).unwrap(),
                &(0..120).map(|i| i * 5).collect::<Vec<_>>(),
            )
            .unwrap();
            let g = l.backward().unwrap();
            (flat(&l), flat(g.get(x.as_tensor()).unwrap()))
        };
        assert_eq!(in_pool(1, run), in_pool(3, run));
    }
}
