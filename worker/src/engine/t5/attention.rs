//! T5 attention: unscaled dot-product attention over `num_heads` heads of size `d_kv`, and the
//! learned relative-position bias (log-spaced buckets) that the first layer of each stack computes
//! and all layers share.

use candle_core::{Device, Tensor};

use crate::engine::error::Result;
use crate::engine::lora::{ForwardCtx, LoraLinear};
use crate::engine::ops;

/// Added to the scores of masked keys; `exp` of it underflows to exactly zero.
pub const MASKED: f32 = -1e30;

/// The bucket of the relative position `key - query`, as Hugging Face's
/// `_relative_position_bucket`.
///
/// Bidirectional (encoder): half the buckets for keys after the query. Within a half, distances
/// below `num_buckets / 2` (of the half) get their own bucket; larger ones share log-spaced buckets
/// up to `max_distance`, beyond which all fall into the last. Causal (decoder): only keys at or
/// before the query count. The logarithm is computed in f32 as PyTorch does, so the buckets agree
/// at their boundaries.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut buckets = num_buckets;
    let mut offset = 0;
    let distance = if bidirectional {
        buckets /= 2;
        if relative_position > 0 {
            offset = buckets;
        }
        relative_position.unsigned_abs() as usize
    } else {
        (-relative_position.min(0)) as usize
    };
    let max_exact = buckets / 2;
    if distance < max_exact {
        return offset + distance;
    }
    let scale = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let log_ratio = (distance as f32 / max_exact as f32).ln() / scale;
    let large = max_exact + (log_ratio * (buckets - max_exact) as f32) as usize;
    offset + large.min(buckets - 1)
}

/// The learned bias table `[num_buckets, num_heads]` of a stack's first self-attention.
#[derive(Debug)]
pub struct RelativeBias {
    pub weight: Tensor,
    pub bidirectional: bool,
    pub num_buckets: usize,
    pub max_distance: usize,
}

impl RelativeBias {
    /// The bias `[1, heads, q_len, k_len]` for queries at positions `q_offset..q_offset + q_len`
    /// and keys at `0..k_len`.
    pub fn bias(&self, q_len: usize, k_len: usize, q_offset: usize) -> Result<Tensor> {
        let mut buckets = Vec::with_capacity(q_len * k_len);
        for q in 0..q_len {
            for k in 0..k_len {
                let relative = k as i64 - (q + q_offset) as i64;
                buckets.push(relative_position_bucket(
                    relative,
                    self.bidirectional,
                    self.num_buckets,
                    self.max_distance,
                ) as u32);
            }
        }
        let index = Tensor::from_vec(buckets, q_len * k_len, self.weight.device())?;
        let heads = self.weight.dim(1)?;
        let bias = self
            .weight
            .index_select(&index, 0)?
            .reshape((q_len, k_len, heads))?;
        Ok(bias.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
    }
}

/// Additive causal mask `[1, 1, q_len, k_len]` for queries at `q_offset..`: keys after the query
/// are masked.
pub fn causal_mask(q_len: usize, k_len: usize, q_offset: usize, device: &Device) -> Result<Tensor> {
    let values: Vec<f32> = (0..q_len)
        .flat_map(|q| (0..k_len).map(move |k| if k > q + q_offset { MASKED } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(values, (1, 1, q_len, k_len), device)?)
}

/// One attention sublayer's projections: `q`, `k`, `v` map `d_model -> heads * d_kv`, `o` maps
/// back.
#[derive(Debug)]
pub struct Attention {
    pub q: LoraLinear,
    pub k: LoraLinear,
    pub v: LoraLinear,
    pub o: LoraLinear,
    pub num_heads: usize,
    pub d_kv: usize,
}

impl Attention {
    /// `[b, s, d_model] -> [b, heads, s, d_kv]` through `layer`.
    pub fn heads(&self, layer: &LoraLinear, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let projected = layer.forward(x, ctx)?;
        Ok(projected
            .reshape((b, s, self.num_heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values `[b, heads, s, d_kv]` of `x`.
    pub fn keys_values(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        Ok((self.heads(&self.k, x, ctx)?, self.heads(&self.v, x, ctx)?))
    }

    /// `o(softmax(q k^T + bias) v)` without the `1/sqrt(d_kv)` scaling (T5 folds it into its
    /// initialisation). `q` is `[b, heads, q_len, d_kv]`, `k`/`v` are `[b, heads, k_len, d_kv]`,
    /// `bias` broadcasts to `[b, heads, q_len, k_len]`; returns `[b, q_len, d_model]`.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(bias)?;
        let weights = ops::softmax_last(&scores)?;
        let out = weights.matmul(v)?;
        let (b, h, s, d) = out.dims4()?;
        let merged = out.transpose(1, 2)?.reshape((b, s, h * d))?;
        self.o.forward(&merged, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets computed by transformers 4.57.3 `T5Attention._relative_position_bucket` for
    /// relative positions -140..=140 step 7 (num_buckets 32, max_distance 128).
    #[test]
    fn buckets_match_transformers() {
        let positions: Vec<i64> = (-20..=20).map(|i| i * 7).collect();
        let bidirectional: Vec<usize> = positions
            .iter()
            .map(|&p| relative_position_bucket(p, true, 32, 128))
            .collect();
        let causal: Vec<usize> = positions
            .iter()
            .map(|&p| relative_position_bucket(p, false, 32, 128))
            .collect();
        assert_eq!(bidirectional, EXPECTED_BIDIRECTIONAL);
        assert_eq!(causal, EXPECTED_CAUSAL);
    }

    const EXPECTED_BIDIRECTIONAL: [usize; 41] = [
        15, 15, 15, 15, 15, 15, 15, 15, 14, 14, 14, 13, 13, 13, 12, 12, 11, 10, 9, 7, 0, 23, 25,
        26, 27, 28, 28, 29, 29, 29, 30, 30, 30, 31, 31, 31, 31, 31, 31, 31, 31,
    ];
    const EXPECTED_CAUSAL: [usize; 41] = [
        31, 31, 31, 31, 30, 30, 29, 29, 28, 28, 27, 26, 25, 24, 23, 22, 20, 18, 14, 7, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    #[test]
    fn bias_table_is_indexed_by_bucket_and_head() {
        let weight = Tensor::arange(0f32, 64., &Device::Cpu)
            .unwrap()
            .reshape((32, 2))
            .unwrap();
        let rb = RelativeBias {
            weight,
            bidirectional: false,
            num_buckets: 32,
            max_distance: 128,
        };
        // Query at position 2 (offset 2), keys 0..3: distances 2, 1, 0 -> buckets 2, 1, 0.
        let b4 = rb
            .bias(1, 3, 2)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec3::<f32>()
            .unwrap();
        assert_eq!(b4[0], vec![vec![4.0, 2.0, 0.0]]);
        assert_eq!(b4[1], vec![vec![5.0, 3.0, 1.0]]);
    }

    #[test]
    fn causal_mask_hides_later_keys() {
        let m = causal_mask(2, 3, 1, &Device::Cpu).unwrap();
        let m = m
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m, vec![vec![0.0, 0.0, MASKED], vec![0.0, 0.0, 0.0]]);
    }
}
