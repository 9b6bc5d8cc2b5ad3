//! The reference device: every operation of [`Device`] is the CPU reference of `tandem-kernels` (fp32 in and
//! out, sums in f64, the functions the CUDA kernels are checked against), so the kernel engine runs, and is
//! tested, on machines without a GPU. Results do not depend on thread count: the frozen products split work by
//! output row and sum each element in one fixed order.

use rayon::prelude::*;
use tandem_kernels::lora::{self, LoraDims, LoraParams};
use tandem_kernels::nf4::Nf4Tensor;
use tandem_kernels::ops::attention::{self, AttentionDims, CachedDims};
use tandem_kernels::ops::{cross_entropy, embedding, rmsnorm, rope, swiglu};
use tandem_kernels::{KernelError, dropout};

use super::device::{Adapter, AdapterGrads, ChunkLoss, Device, LinearGrads};
use crate::engine::error::{EngineError, Result};

/// The CPU reference device.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reference;

/// A frozen weight on the reference device: dense values (an NF4 weight is kept with its dequantised values,
/// which are the same bits on every use).
#[derive(Debug)]
pub struct RefFrozen {
    values: Vec<f32>,
    nf4: Option<Nf4Tensor>,
}

fn kernel(op: &'static str, shapes: String) -> impl FnOnce(KernelError) -> EngineError {
    move |e| EngineError::kernel(op, Reference.describe(), shapes, e)
}

/// `x W^T`: `x` is `m x k`, `w` is `n x k`.
fn product_nt(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        let xi = &x[i * k..(i + 1) * k];
        for (j, o) in row.iter_mut().enumerate() {
            let wj = &w[j * k..(j + 1) * k];
            *o = xi
                .iter()
                .zip(wj)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>() as f32;
        }
    });
    debug_assert_eq!(out.len(), m * n);
    out
}

/// `dy W`: `dy` is `m x n`, `w` is `n x k`.
fn product_nn(dy: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * k];
    out.par_chunks_mut(k).enumerate().for_each(|(i, row)| {
        let mut acc = vec![0f64; k];
        for (j, &d) in dy[i * n..(i + 1) * n].iter().enumerate() {
            let d = f64::from(d);
            if d == 0.0 {
                continue;
            }
            for (a, &wv) in acc.iter_mut().zip(&w[j * k..(j + 1) * k]) {
                *a += d * f64::from(wv);
            }
        }
        for (o, a) in row.iter_mut().zip(acc) {
            *o = a as f32;
        }
    });
    out
}

fn check(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(EngineError::kernel(
            op,
            Reference.describe(),
            format!("{what}: {got} values, expected {want}"),
            "size mismatch",
        ))
    }
}

fn lora_params<'a>(adapter: &Adapter<Vec<f32>>, mask: Option<&'a Vec<u8>>) -> LoraParams<'a> {
    LoraParams {
        scale: adapter.scale,
        dropout: if mask.is_some() { adapter.dropout } else { 0.0 },
        keep_mask: mask.map(Vec::as_slice),
    }
}

impl Device for Reference {
    type Buf = Vec<f32>;
    type Frozen = RefFrozen;
    type Mask = Vec<u8>;

    fn describe(&self) -> String {
        "reference (CPU)".into()
    }

    fn upload(&self, values: &[f32]) -> Result<Vec<f32>> {
        Ok(values.to_vec())
    }

    fn download(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }

    fn frozen(&self, values: &[f32], rows: usize, cols: usize, nf4: bool) -> Result<RefFrozen> {
        check("frozen", "weight", values.len(), rows * cols)?;
        if !nf4 {
            return Ok(RefFrozen {
                values: values.to_vec(),
                nf4: None,
            });
        }
        let q = Nf4Tensor::quantize(values, rows, cols, true)
            .map_err(kernel("nf4_quantize", format!("{rows}x{cols}")))?;
        Ok(RefFrozen {
            values: q.dequantize(),
            nf4: Some(q),
        })
    }

    fn frozen_bytes(&self, w: &RefFrozen) -> usize {
        w.nf4.as_ref().map_or(w.values.len() * 4, Nf4Tensor::bytes)
    }

    fn embedding(
        &self,
        table: &Vec<f32>,
        vocab: usize,
        dim: usize,
        ids: &[u32],
    ) -> Result<Vec<f32>> {
        embedding::forward(table, vocab, dim, ids).map_err(kernel(
            "embedding",
            format!("{vocab}x{dim}, {} ids", ids.len()),
        ))
    }

    fn rmsnorm(
        &self,
        x: &Vec<f32>,
        rows: usize,
        dim: usize,
        weight: &Vec<f32>,
        eps: f32,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        rmsnorm::forward(x, rows, dim, weight, eps)
            .map_err(kernel("rmsnorm", format!("{rows}x{dim}")))
    }

    fn rmsnorm_backward(
        &self,
        x: &Vec<f32>,
        rows: usize,
        dim: usize,
        weight: &Vec<f32>,
        rstd: &Vec<f32>,
        dy: &Vec<f32>,
    ) -> Result<Vec<f32>> {
        rmsnorm::backward(x, rows, dim, weight, rstd, dy)
            .map(|(dx, _)| dx)
            .map_err(kernel("rmsnorm_backward", format!("{rows}x{dim}")))
    }

    fn rope(
        &self,
        x: &Vec<f32>,
        tokens: usize,
        heads: usize,
        head_dim: usize,
        positions: &[u32],
        inv_freq: &[f32],
        sign: f32,
    ) -> Result<Vec<f32>> {
        rope::apply(x, tokens, heads, head_dim, positions, inv_freq, sign)
            .map_err(kernel("rope", format!("{tokens}x{heads}x{head_dim}")))
    }

    fn attention(
        &self,
        dims: AttentionDims,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
    ) -> Result<Vec<f32>> {
        attention::forward(dims, q, k, v).map_err(kernel("attention", format!("{dims:?}")))
    }

    fn attention_backward(
        &self,
        dims: AttentionDims,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        dout: &Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        attention::backward(dims, q, k, v, dout)
            .map_err(kernel("attention_backward", format!("{dims:?}")))
    }

    fn attention_cached(
        &self,
        dims: CachedDims,
        pad: &[usize],
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
    ) -> Result<Vec<f32>> {
        attention::forward_cached(dims, pad, q, k, v)
            .map_err(kernel("attention_cached", format!("{dims:?}")))
    }

    fn swiglu(&self, gate: &Vec<f32>, up: &Vec<f32>) -> Result<Vec<f32>> {
        swiglu::forward(gate, up).map_err(kernel("swiglu", format!("{} values", gate.len())))
    }

    fn swiglu_backward(
        &self,
        gate: &Vec<f32>,
        up: &Vec<f32>,
        dy: &Vec<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        swiglu::backward(gate, up, dy)
            .map_err(kernel("swiglu_backward", format!("{} values", gate.len())))
    }

    fn add(&self, a: &Vec<f32>, b: &Vec<f32>) -> Result<Vec<f32>> {
        check("add", "b", b.len(), a.len())?;
        Ok(a.iter().zip(b).map(|(x, y)| x + y).collect())
    }

    fn keep_mask(&self, seed: u64, stream: u64, n: usize, p: f32) -> Result<Vec<u8>> {
        dropout::keep_mask(seed, stream, n, p).map_err(kernel("dropout_keep_mask", format!("{n}")))
    }

    fn linear(
        &self,
        dims: LoraDims,
        x: &Vec<f32>,
        w: &RefFrozen,
        adapter: Option<&Adapter<Vec<f32>>>,
        mask: Option<&Vec<u8>>,
    ) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let (m, n, k) = (dims.tokens, dims.out_features, dims.in_features);
        check("linear", "x", x.len(), m * k)?;
        check("linear", "w", w.values.len(), n * k)?;
        let Some(ad) = adapter else {
            return Ok((product_nt(x, &w.values, m, n, k), None));
        };
        let out = lora::forward(dims, x, &w.values, &ad.a, &ad.b, lora_params(ad, mask))
            .map_err(kernel("lora_forward", format!("{dims:?}")))?;
        Ok((out.y, Some(out.h)))
    }

    fn linear_backward(
        &self,
        dims: LoraDims,
        x: &Vec<f32>,
        w: &RefFrozen,
        adapter: Option<&Adapter<Vec<f32>>>,
        mask: Option<&Vec<u8>>,
        h: Option<&Vec<f32>>,
        dy: &Vec<f32>,
    ) -> Result<LinearGrads<Vec<f32>>> {
        let (m, n, k) = (dims.tokens, dims.out_features, dims.in_features);
        check("linear_backward", "dy", dy.len(), m * n)?;
        let (Some(ad), Some(h)) = (adapter, h) else {
            return Ok((product_nn(dy, &w.values, m, n, k), None));
        };
        let g = lora::backward(
            dims,
            x,
            &w.values,
            &ad.a,
            &ad.b,
            lora_params(ad, mask),
            h,
            dy,
        )
        .map_err(kernel("lora_backward", format!("{dims:?}")))?;
        Ok((g.dx, Some(AdapterGrads { da: g.da, db: g.db })))
    }

    fn matmul_nt(
        &self,
        x: &Vec<f32>,
        rows: usize,
        w: &Vec<f32>,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>> {
        check("matmul_nt", "x", x.len(), rows * k)?;
        check("matmul_nt", "w", w.len(), n * k)?;
        Ok(product_nt(x, w, rows, n, k))
    }

    fn matmul_nn(
        &self,
        dy: &Vec<f32>,
        rows: usize,
        w: &Vec<f32>,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>> {
        check("matmul_nn", "dy", dy.len(), rows * n)?;
        check("matmul_nn", "w", w.len(), n * k)?;
        Ok(product_nn(dy, w, rows, n, k))
    }

    fn cross_entropy(
        &self,
        logits: &Vec<f32>,
        rows: usize,
        vocab: usize,
        targets: &[i32],
        scale: f32,
    ) -> Result<(ChunkLoss, Vec<f32>)> {
        let shapes = || format!("{rows}x{vocab}");
        let f = cross_entropy::forward(logits, rows, vocab, targets, -100)
            .map_err(kernel("cross_entropy", shapes()))?;
        let d = cross_entropy::backward(logits, rows, vocab, targets, -100, &f.lse, scale)
            .map_err(kernel("cross_entropy_backward", shapes()))?;
        Ok((
            ChunkLoss {
                loss_sum: f.loss_sum,
                count: f.count,
            },
            d,
        ))
    }

    fn gather_rows(&self, x: &Vec<f32>, width: usize, rows: &[usize]) -> Result<Vec<f32>> {
        let have = x.len() / width.max(1);
        if let Some(&r) = rows.iter().find(|&&r| r >= have) {
            return Err(EngineError::kernel(
                "gather_rows",
                self.describe(),
                format!("{have} rows of {width}"),
                format!("row {r} is out of range"),
            ));
        }
        Ok(rows
            .iter()
            .flat_map(|&r| x[r * width..(r + 1) * width].iter().copied())
            .collect())
    }

    fn scatter_rows(
        &self,
        x: &Vec<f32>,
        width: usize,
        rows: &[usize],
        total_rows: usize,
    ) -> Result<Vec<f32>> {
        check("scatter_rows", "x", x.len(), rows.len() * width)?;
        let mut out = vec![0f32; total_rows * width];
        for (i, &r) in rows.iter().enumerate() {
            if r >= total_rows {
                return Err(EngineError::kernel(
                    "scatter_rows",
                    self.describe(),
                    format!("{total_rows} rows of {width}"),
                    format!("row {r} is out of range"),
                ));
            }
            out[r * width..(r + 1) * width].copy_from_slice(&x[i * width..(i + 1) * width]);
        }
        Ok(out)
    }

    fn append_seq(
        &self,
        old: Option<&Vec<f32>>,
        new: &Vec<f32>,
        rows: usize,
        old_len: usize,
        new_len: usize,
        width: usize,
    ) -> Result<Vec<f32>> {
        check("append_seq", "new", new.len(), rows * new_len * width)?;
        let empty = Vec::new();
        let old = old.unwrap_or(&empty);
        check("append_seq", "old", old.len(), rows * old_len * width)?;
        let mut out = Vec::with_capacity(rows * (old_len + new_len) * width);
        for r in 0..rows {
            out.extend_from_slice(&old[r * old_len * width..(r + 1) * old_len * width]);
            out.extend_from_slice(&new[r * new_len * width..(r + 1) * new_len * width]);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frozen_products_match_float64_and_each_other() {
        let (m, n, k) = (3, 4, 5);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        let y = product_nt(&x, &w, m, n, k);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|e| f64::from(x[i * k + e]) * f64::from(w[j * k + e]))
                    .sum();
                assert_eq!(y[i * n + j], want as f32);
            }
        }
        let dy: Vec<f32> = (0..m * n).map(|i| i as f32 - 3.0).collect();
        let dx = product_nn(&dy, &w, m, n, k);
        for i in 0..m {
            for e in 0..k {
                let want: f64 = (0..n)
                    .map(|j| f64::from(dy[i * n + j]) * f64::from(w[j * k + e]))
                    .sum();
                assert!((f64::from(dx[i * k + e]) - want).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn rows_gather_scatter_and_append() {
        let d = Reference;
        let x: Vec<f32> = (0..6).map(|i| i as f32).collect();
        assert_eq!(d.gather_rows(&x, 2, &[2, 0]).unwrap(), vec![4., 5., 0., 1.]);
        assert_eq!(
            d.scatter_rows(&vec![4., 5.], 2, &[1], 3).unwrap(),
            vec![0., 0., 4., 5., 0., 0.]
        );
        assert!(d.gather_rows(&x, 2, &[3]).is_err());
        let old = vec![1., 2.]; // 2 rows, 1 column, width 1
        let new = vec![3., 4.];
        assert_eq!(
            d.append_seq(Some(&old), &new, 2, 1, 1, 1).unwrap(),
            vec![1., 3., 2., 4.]
        );
    }
}
