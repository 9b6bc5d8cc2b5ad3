//! Rotary position embedding (RoPE) with Llama-3.1 frequency scaling, in Hugging Face's "rotate half" layout:
//! within a head of size d, element i (< d/2) pairs with element i + d/2 and both turn by `pos * inv_freq[i]`.
//! The backward is the same rotation by the opposite angle.

use super::check_len;
use crate::error::KernelError;

/// Llama-3.1's `rope_scaling` (`rope_type: "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3Scaling {
    /// `factor` (8 for Llama-3.1).
    pub factor: f64,
    /// `low_freq_factor` (1).
    pub low_freq_factor: f64,
    /// `high_freq_factor` (4).
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings` (8192).
    pub original_max_position: f64,
}

impl Llama3Scaling {
    /// The values in Llama-3.1-8B's config.
    pub const LLAMA_3_1: Self = Self {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
}

/// `inv_freq[i] = theta^(-2i/d)` for i < d/2, rescaled as Llama-3.1 does when `scaling` is given (f64, then fp32).
pub fn inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: Option<Llama3Scaling>,
) -> Result<Vec<f32>, KernelError> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(KernelError::invalid(
            "head_dim",
            format!("{head_dim}: must be even and at least 2"),
        ));
    }
    Ok((0..head_dim / 2)
        .map(|i| {
            let f = theta.powf(-((2 * i) as f64) / head_dim as f64);
            let Some(s) = scaling else { return f as f32 };
            let low_wavelen = s.original_max_position / s.low_freq_factor;
            let high_wavelen = s.original_max_position / s.high_freq_factor;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let scaled = if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth = (s.original_max_position / wavelen - s.low_freq_factor)
                    / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            };
            scaled as f32
        })
        .collect())
}

/// Rotates `x` (`tokens x heads x head_dim`) for the given positions; `sign = 1` forward, `-1` backward.
pub fn apply(
    x: &[f32],
    tokens: usize,
    heads: usize,
    head_dim: usize,
    positions: &[u32],
    inv_freq: &[f32],
    sign: f32,
) -> Result<Vec<f32>, KernelError> {
    check_len("x", x.len(), tokens, heads * head_dim)?;
    check_len("positions", positions.len(), tokens, 1)?;
    check_len("inv_freq", inv_freq.len(), head_dim / 2, 1)?;
    let half = head_dim / 2;
    let mut out = vec![0.0f32; x.len()];
    for (t, &pos) in positions.iter().enumerate() {
        for h in 0..heads {
            let base = (t * heads + h) * head_dim;
            for i in 0..half {
                let angle = f64::from(pos) * f64::from(inv_freq[i]);
                let (sin, cos) = (f64::from(sign) * angle).sin_cos();
                let (a, b) = (f64::from(x[base + i]), f64::from(x[base + i + half]));
                out[base + i] = (a * cos - b * sin) as f32;
                out[base + i + half] = (b * cos + a * sin) as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::normal_f32;

    #[test]
    fn llama3_scaling_bands() {
        let plain = inv_freq(128, 500_000.0, None).unwrap();
        let scaled = inv_freq(128, 500_000.0, Some(Llama3Scaling::LLAMA_3_1)).unwrap();
        assert_eq!(plain[0], 1.0);
        assert_eq!(scaled[0], 1.0, "high frequencies unchanged");
        let last = 63;
        assert!(
            (f64::from(scaled[last]) - f64::from(plain[last]) / 8.0).abs() < 1e-12,
            "low frequencies / 8"
        );
        // In the band between, the scaled value lies between f/8 and f.
        for i in 0..64 {
            assert!(
                scaled[i] <= plain[i] && f64::from(scaled[i]) >= f64::from(plain[i]) / 8.0 - 1e-12
            );
        }
        assert!(inv_freq(3, 1e4, None).is_err());
    }

    #[test]
    fn rotation_keeps_norms_inverts_and_gives_relative_dot_products() {
        let (t, h, d) = (4, 2, 8);
        let f = inv_freq(d, 10_000.0, None).unwrap();
        let x = normal_f32(1, t * h * d);
        let pos = [0u32, 1, 7, 100];
        let y = apply(&x, t, h, d, &pos, &f, 1.0).unwrap();
        assert_eq!(&y[..h * d], &x[..h * d], "position 0 is the identity");
        let back = apply(&y, t, h, d, &pos, &f, -1.0).unwrap();
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() < 1e-5);
        }
        let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>();
        assert!((norm(&y) - norm(&x)).abs() < 1e-4 * norm(&x));
        // <R(p) q, R(p') k> depends only on p - p': shift both positions by 5.
        let q = normal_f32(2, d);
        let k = normal_f32(3, d);
        let dot = |pq: u32, pk: u32| {
            let a = apply(&q, 1, 1, d, &[pq], &f, 1.0).unwrap();
            let b = apply(&k, 1, 1, d, &[pk], &f, 1.0).unwrap();
            a.iter()
                .zip(&b)
                .map(|(&u, &v)| f64::from(u) * f64::from(v))
                .sum::<f64>()
        };
        assert!((dot(3, 1) - dot(8, 6)).abs() < 1e-5);
    }
}
