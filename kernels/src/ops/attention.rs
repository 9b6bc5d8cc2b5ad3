//! Causal self-attention with grouped-query heads (GQA), the naive reference: `q` is
//! `batch x tokens x q_heads x head_dim`, `k` and `v` are `batch x tokens x kv_heads x head_dim`, query head h
//! reads kv head `h / (q_heads / kv_heads)`; scores are scaled by `1 / sqrt(head_dim)`, token t sees 0..=t.

use super::check_len;
use crate::error::KernelError;

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    /// Sequences.
    pub batch: usize,
    /// Tokens per sequence.
    pub tokens: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads (divides `q_heads`).
    pub kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
}

impl AttentionDims {
    fn validate(&self, q: usize, k: usize, v: usize) -> Result<(), KernelError> {
        let d = *self;
        if d.batch == 0
            || d.tokens == 0
            || d.kv_heads == 0
            || d.head_dim == 0
            || !d.q_heads.is_multiple_of(d.kv_heads)
            || d.q_heads == 0
        {
            return Err(KernelError::invalid(
                "attention dims",
                format!("{d:?}: sizes >= 1, kv_heads dividing q_heads"),
            ));
        }
        check_len("q", q, d.batch * d.tokens, d.q_heads * d.head_dim)?;
        check_len("k", k, d.batch * d.tokens, d.kv_heads * d.head_dim)?;
        check_len("v", v, d.batch * d.tokens, d.kv_heads * d.head_dim)
    }

    fn qi(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.tokens + t) * self.q_heads + h) * self.head_dim
    }

    fn ki(&self, b: usize, t: usize, h: usize) -> usize {
        ((b * self.tokens + t) * self.kv_heads + h / (self.q_heads / self.kv_heads)) * self.head_dim
    }

    /// Softmax probabilities of query (b, t, h) over keys 0..=t, in f64.
    fn probs(&self, q: &[f32], k: &[f32], b: usize, t: usize, h: usize) -> Vec<f64> {
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let (qo, dim) = (self.qi(b, t, h), self.head_dim);
        let s: Vec<f64> = (0..=t)
            .map(|j| {
                let ko = self.ki(b, j, h);
                (0..dim)
                    .map(|e| f64::from(q[qo + e]) * f64::from(k[ko + e]))
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|x| x / z).collect()
    }
}

/// Forward: the output, shaped like `q`.
pub fn forward(d: AttentionDims, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>, KernelError> {
    d.validate(q.len(), k.len(), v.len())?;
    let mut out = vec![0.0f32; q.len()];
    for b in 0..d.batch {
        for t in 0..d.tokens {
            for h in 0..d.q_heads {
                let p = d.probs(q, k, b, t, h);
                let o = d.qi(b, t, h);
                for e in 0..d.head_dim {
                    out[o + e] = p
                        .iter()
                        .enumerate()
                        .map(|(j, pj)| pj * f64::from(v[d.ki(b, j, h) + e]))
                        .sum::<f64>() as f32;
                }
            }
        }
    }
    Ok(out)
}

/// Gradients of q, k and v.
pub type AttentionGrads = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Backward: `(dq, dk, dv)` given `dout` (shaped like `q`), recomputing the probabilities.
pub fn backward(
    d: AttentionDims,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
) -> Result<AttentionGrads, KernelError> {
    d.validate(q.len(), k.len(), v.len())?;
    check_len("dout", dout.len(), 1, q.len())?;
    let scale = 1.0 / (d.head_dim as f64).sqrt();
    let mut dq = vec![0.0f64; q.len()];
    let mut dk = vec![0.0f64; k.len()];
    let mut dv = vec![0.0f64; v.len()];
    for b in 0..d.batch {
        for t in 0..d.tokens {
            for h in 0..d.q_heads {
                let p = d.probs(q, k, b, t, h);
                let o = d.qi(b, t, h);
                // dP_j = dout . v_j ; dS_j = P_j (dP_j - sum_i P_i dP_i)
                let dp: Vec<f64> = (0..=t)
                    .map(|j| {
                        (0..d.head_dim)
                            .map(|e| f64::from(dout[o + e]) * f64::from(v[d.ki(b, j, h) + e]))
                            .sum()
                    })
                    .collect();
                let dot: f64 = p.iter().zip(&dp).map(|(a, c)| a * c).sum();
                for j in 0..=t {
                    let ds = p[j] * (dp[j] - dot) * scale;
                    let ko = d.ki(b, j, h);
                    for e in 0..d.head_dim {
                        dq[o + e] += ds * f64::from(k[ko + e]);
                        dk[ko + e] += ds * f64::from(q[o + e]);
                        dv[ko + e] += p[j] * f64::from(dout[o + e]);
                    }
                }
            }
        }
    }
    let n = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    Ok((n(dq), n(dk), n(dv)))
}

/// Sizes of attention against a key/value cache (decoding): `new` query tokens per row sit at columns
/// `past..past + new`; keys and values cover columns `0..past + new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedDims {
    pub rows: usize,
    pub new: usize,
    pub past: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Decoding attention: `q` is `rows x new x q_heads x head_dim`, `k` and `v` are
/// `rows x (past + new) x kv_heads x head_dim`. The query at column `c` of row `b` sees keys `pad[b]..=c` (the
/// first `pad[b]` columns are left padding); a query that sees no key (a padding column) gives zeros. With
/// `past = 0` and no padding this is [`forward`].
pub fn forward_cached(
    d: CachedDims,
    pad: &[usize],
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<Vec<f32>, KernelError> {
    let s = d.past + d.new;
    if d.rows == 0
        || d.new == 0
        || d.head_dim == 0
        || d.kv_heads == 0
        || d.q_heads == 0
        || !d.q_heads.is_multiple_of(d.kv_heads)
    {
        return Err(KernelError::invalid(
            "cached attention dims",
            format!("{d:?}: sizes >= 1, kv_heads dividing q_heads"),
        ));
    }
    check_len("pad", pad.len(), d.rows, 1)?;
    check_len("q", q.len(), d.rows * d.new, d.q_heads * d.head_dim)?;
    check_len("k", k.len(), d.rows * s, d.kv_heads * d.head_dim)?;
    check_len("v", v.len(), d.rows * s, d.kv_heads * d.head_dim)?;
    let scale = 1.0 / (d.head_dim as f64).sqrt();
    let group = d.q_heads / d.kv_heads;
    let dim = d.head_dim;
    let mut out = vec![0.0f32; q.len()];
    for (b, &first) in pad.iter().enumerate() {
        for i in 0..d.new {
            let col = d.past + i;
            if col < first {
                continue;
            }
            for h in 0..d.q_heads {
                let qo = ((b * d.new + i) * d.q_heads + h) * dim;
                let ko = |j: usize| ((b * s + j) * d.kv_heads + h / group) * dim;
                let scores: Vec<f64> = (first..=col)
                    .map(|j| {
                        (0..dim)
                            .map(|e| f64::from(q[qo + e]) * f64::from(k[ko(j) + e]))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..dim {
                    out[qo + c] = e
                        .iter()
                        .zip(first..=col)
                        .map(|(w, j)| w / z * f64::from(v[ko(j) + c]))
                        .sum::<f64>() as f32;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{close, fd};
    use crate::testdata::normal_f32;

    #[test]
    fn causal_gqa_matches_float64_and_finite_differences() {
        let d = AttentionDims {
            batch: 2,
            tokens: 4,
            q_heads: 4,
            kv_heads: 2,
            head_dim: 3,
        };
        let q = normal_f32(1, 2 * 4 * 4 * 3);
        let k = normal_f32(2, 2 * 4 * 2 * 3);
        let v = normal_f32(3, 2 * 4 * 2 * 3);
        let dout = normal_f32(4, q.len());
        let out = forward(d, &q, &k, &v).unwrap();
        // Token 0 sees only itself: its output is v of token 0 of its kv head.
        assert!(
            (out[0] - v[0]).abs() < 1e-6 && (out[3] - v[0]).abs() < 1e-6,
            "q head 1 shares kv head 0"
        );
        assert!((out[6] - v[3]).abs() < 1e-6, "q head 2 reads kv head 1");
        let w = |x: &[f32]| x.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let (qw, kw, vw) = (w(&q), w(&k), w(&v));
        let to32 = |x: &[f64]| x.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let loss = |qq: &[f64], kk: &[f64], vv: &[f64]| -> f64 {
            let o = forward(d, &to32(qq), &to32(kk), &to32(vv)).unwrap();
            o.iter()
                .zip(&dout)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum()
        };
        let (dq, dk, dv) = backward(d, &q, &k, &v, &dout).unwrap();
        // The loss goes through fp32 outputs: a step of 1e-2 keeps the rounding far below the tolerance.
        for i in (0..q.len()).step_by(5) {
            assert!(
                close(dq[i], fd(&|x| loss(x, &kw, &vw), &qw, i, 1e-2), 2e-3),
                "dq[{i}]"
            );
        }
        for i in (0..k.len()).step_by(3) {
            assert!(
                close(dk[i], fd(&|x| loss(&qw, x, &vw), &kw, i, 1e-2), 2e-3),
                "dk[{i}]"
            );
            assert!(
                close(dv[i], fd(&|x| loss(&qw, &kw, x), &vw, i, 1e-2), 2e-3),
                "dv[{i}]"
            );
        }
    }

    #[test]
    fn cached_attention_is_the_full_attention_split_at_any_column_and_ignores_left_padding() {
        let (b, t, hq, hk, dim) = (2, 5, 4, 2, 3);
        let d = AttentionDims {
            batch: b,
            tokens: t,
            q_heads: hq,
            kv_heads: hk,
            head_dim: dim,
        };
        let q = normal_f32(11, b * t * hq * dim);
        let k = normal_f32(12, b * t * hk * dim);
        let v = normal_f32(13, b * t * hk * dim);
        let full = forward(d, &q, &k, &v).unwrap();
        // Queries of columns past.. against the whole cache equal the full attention's rows there.
        for past in 0..t {
            let new = t - past;
            let qs: Vec<f32> = (0..b)
                .flat_map(|r| q[(r * t + past) * hq * dim..(r + 1) * t * hq * dim].to_vec())
                .collect();
            let c = CachedDims {
                rows: b,
                new,
                past,
                q_heads: hq,
                kv_heads: hk,
                head_dim: dim,
            };
            let got = forward_cached(c, &[0, 0], &qs, &k, &v).unwrap();
            let want: Vec<f32> = (0..b)
                .flat_map(|r| full[(r * t + past) * hq * dim..(r + 1) * t * hq * dim].to_vec())
                .collect();
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-6, "past {past}");
            }
        }
        // A row left-padded by 2 gives, on its real columns, the attention of the unpadded sequence.
        let (pad, real) = (2, 3);
        let c = CachedDims {
            rows: 1,
            new: pad + real,
            past: 0,
            q_heads: hq,
            kv_heads: hk,
            head_dim: dim,
        };
        let junk_q = normal_f32(14, pad * hq * dim);
        let junk_kv = normal_f32(15, pad * hk * dim);
        let cat = |a: &[f32], b: &[f32]| [a, b].concat();
        let w = hk * dim;
        let padded = forward_cached(
            c,
            &[pad],
            &cat(&junk_q, &q[..real * hq * dim]),
            &cat(&junk_kv, &k[..real * w]),
            &cat(&junk_kv, &v[..real * w]),
        )
        .unwrap();
        let d1 = AttentionDims {
            batch: 1,
            tokens: real,
            ..d
        };
        let plain = forward(d1, &q[..real * hq * dim], &k[..real * w], &v[..real * w]).unwrap();
        assert!(padded[..pad * hq * dim].iter().all(|&x| x == 0.0));
        for (x, y) in padded[pad * hq * dim..].iter().zip(&plain) {
            assert!((x - y).abs() < 1e-6);
        }
        assert!(
            forward_cached(c, &[0, 0], &q, &k, &v).is_err(),
            "pad per row"
        );
    }
}
