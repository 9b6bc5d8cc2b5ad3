//! Helpers shared by the GPU parity tests: finding the GPU (or skipping, unless `TANDEM_REQUIRE_GPU=1`), the
//! printed and replayable seed, NaN-poisoned device buffers, and the relative-error check.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use tandem_kernels::cuda::Gpu;
use tandem_kernels::ops::attention::AttentionDims;

/// The GPU, or `None` (with the reason printed) when there is none; with `TANDEM_REQUIRE_GPU=1` a missing GPU
/// fails the test instead.
pub fn gpu() -> Option<Arc<Gpu>> {
    match Gpu::get() {
        Some(g) => Some(g),
        None => {
            let why = Gpu::absence_reason().unwrap_or_default();
            let required = std::env::var("TANDEM_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "TANDEM_REQUIRE_GPU=1 but no GPU: {why}");
            println!("skipped: no GPU ({why})");
            None
        }
    }
}

/// `TANDEM_SEED`, else one drawn from the clock; printed either way.
pub fn seed() -> u64 {
    let s = std::env::var("TANDEM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("seed = {s} (TANDEM_SEED={s} replays it)");
    s
}

/// A device buffer of `n` (at least 1) NaNs: an output the kernel must overwrite.
pub fn nan(gpu: &Gpu, n: usize) -> CudaSlice<f32> {
    gpu.upload(&vec![f32::NAN; n.max(1)]).unwrap()
}

/// The first `n` values of a device buffer.
pub fn get(gpu: &Gpu, s: &CudaSlice<f32>, n: usize) -> Vec<f32> {
    gpu.download(s).unwrap()[..n].to_vec()
}

/// `||got - want|| / ||want|| < tol`, with NaN or infinity never passing. An exactly zero reference (e.g. dq and
/// dk of attention over one token) instead needs every GPU value below 1e-5 in absolute value.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        panic!("{what}: element {i} of the GPU output is {}", got[i]);
    }
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (f64::from(g) - f64::from(w)).powi(2))
        .sum();
    let den: f64 = want.iter().map(|&w| f64::from(w).powi(2)).sum();
    if den == 0.0 {
        let worst = got.iter().fold(0.0f64, |m, &g| m.max(f64::from(g).abs()));
        assert!(worst < 1e-5, "{what}: reference is zero, GPU has {worst}");
        return;
    }
    let err = (num / den).sqrt();
    println!("  {what}: relative error {err:.3e}");
    assert!(err < tol, "{what}: relative error {err} (limit {tol})");
}

/// The log-sum-exp of each query's scaled scores, in f64 (row `(b * T + t) * Hq + h`).
pub fn reference_lse(d: AttentionDims, q: &[f32], k: &[f32]) -> Vec<f32> {
    let scale = 1.0 / (d.head_dim as f64).sqrt();
    let group = d.q_heads / d.kv_heads;
    let mut out = Vec::with_capacity(d.batch * d.tokens * d.q_heads);
    for b in 0..d.batch {
        for t in 0..d.tokens {
            for h in 0..d.q_heads {
                let qo = ((b * d.tokens + t) * d.q_heads + h) * d.head_dim;
                let s: Vec<f64> = (0..=t)
                    .map(|j| {
                        let ko = ((b * d.tokens + j) * d.kv_heads + h / group) * d.head_dim;
                        (0..d.head_dim)
                            .map(|e| f64::from(q[qo + e]) * f64::from(k[ko + e]))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                out.push((m + s.iter().map(|x| (x - m).exp()).sum::<f64>().ln()) as f32);
            }
        }
    }
    out
}

/// An attention shape.
pub fn dims(
    batch: usize,
    tokens: usize,
    q_heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> AttentionDims {
    AttentionDims {
        batch,
        tokens,
        q_heads,
        kv_heads,
        head_dim,
    }
}
