//! Deterministic random inputs for tests, parity checks and benchmarks (ChaCha8, Box-Muller): same seed, same bits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A uniform f64 in (0, 1) from 53 random bits (never 0, so `ln` is finite).
fn open_unit(rng: &mut ChaCha8Rng) -> f64 {
    ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// `n` draws from N(0, 1), rounded to f32.
pub fn normal_f32(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let (u, v) = (open_unit(&mut rng), open_unit(&mut rng));
        let radius = (-2.0 * u.ln()).sqrt();
        let angle = 2.0 * std::f64::consts::PI * v;
        out.push((radius * angle.cos()) as f32);
        out.push((radius * angle.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// `n` draws from U(lo, hi), rounded to f32.
pub fn uniform_f32(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (f64::from(lo) + f64::from(hi - lo) * open_unit(&mut rng)) as f32)
        .collect()
}

/// `n` uniform integers in `0..bound`.
pub fn indices(seed: u64, n: usize, bound: u32) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| (rng.next_u64() % u64::from(bound)) as u32)
        .collect()
}

/// A dropout keep-mask with keep probability `keep`, as 0/1 bytes.
pub fn keep_mask(seed: u64, n: usize, keep: f64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| u8::from(open_unit(&mut rng) < keep))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_draws_are_deterministic_and_standard() {
        let a = normal_f32(1, 100_001);
        assert_eq!(a, normal_f32(1, 100_001));
        assert_ne!(a[..10], normal_f32(2, 10)[..]);
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / a.len() as f64;
        let var = a
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
    }
}
