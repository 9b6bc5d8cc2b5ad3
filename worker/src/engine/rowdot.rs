//! `x W^T` for a handful of rows `x` (decoding: one row per sequence of the batch) as row-by-row dot products.
//!
//! A general GEMM packs the whole weight into its tile layout on every call; with 1-8 input rows that copy costs
//! more than the multiply. Here each weight row `W[o]` is read once, straight from its `[out, in]` storage, and
//! dotted with every input row while it is in cache. The dots use AVX2+FMA when the CPU has them (detected at run
//! time, like the GEMM), with a fixed summation order, so the same machine always gives the same bits.

use rayon::prelude::*;

/// Inputs with at most this many rows take this path; larger ones are GEMM work.
pub const MAX_ROWS: usize = 8;

/// Output features per parallel task (large enough that scheduling is noise next to the dots).
const FEATURES_PER_TASK: usize = 256;

/// `y[r][o] = sum_k x[r][k] * w[o][k]` for `x` `[rows, k]` and `w` `[out, k]`, both row-major; `y` is
/// `[rows, out]`.
pub fn matmul_wt(x: &[f32], rows: usize, w: &[f32], out: usize) -> Vec<f32> {
    let k = x.len().checked_div(rows).unwrap_or(0);
    debug_assert_eq!(x.len(), rows * k);
    debug_assert_eq!(w.len(), out * k);
    // Computed transposed ([out, rows]: each task owns a contiguous block), then laid out as [rows, out].
    let mut yt = vec![0f32; out * rows];
    if k == 0 || rows == 0 {
        return vec![0f32; rows * out];
    }
    let fill = |(block, dst): (usize, &mut [f32])| {
        let first = block * FEATURES_PER_TASK;
        for (i, cell) in dst.chunks_exact_mut(rows).enumerate() {
            let wrow = &w[(first + i) * k..(first + i + 1) * k];
            for (r, y) in cell.iter_mut().enumerate() {
                *y = dot(&x[r * k..(r + 1) * k], wrow);
            }
        }
    };
    if rayon::current_num_threads() > 1 && out > FEATURES_PER_TASK {
        yt.par_chunks_mut(FEATURES_PER_TASK * rows)
            .enumerate()
            .for_each(fill);
    } else {
        yt.chunks_mut(FEATURES_PER_TASK * rows)
            .enumerate()
            .for_each(fill);
    }
    if rows == 1 {
        // [out, 1] and [1, out] are the same layout.
        return yt;
    }
    let mut y = vec![0f32; rows * out];
    for (o, cell) in yt.chunks_exact(rows).enumerate() {
        for (r, v) in cell.iter().enumerate() {
            y[r * out + o] = *v;
        }
    }
    y
}

/// `sum a[i] * b[i]` in a fixed order: 16 interleaved partial sums, combined pairwise, then the tail.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the features the function is compiled for were just detected.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// `FUSED`: multiply-add in one rounding (only where the CPU has FMA; the software `fma` is slow).
#[inline(always)]
fn dot_lanes<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let madd = |x: f32, y: f32, acc: f32| {
        if FUSED {
            x.mul_add(y, acc)
        } else {
            x * y + acc
        }
    };
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ac = a.chunks_exact(16);
    let mut bc = b.chunks_exact(16);
    for (x, y) in (&mut ac).zip(&mut bc) {
        for i in 0..16 {
            acc[i] = madd(x[i], y[i], acc[i]);
        }
    }
    let mut width = 8;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    let mut sum = acc[0];
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        sum = madd(*x, *y, sum);
    }
    sum
}

/// AVX2: two 8-lane FMA accumulators over 16 floats per step, the same combination order as
/// [`dot_lanes`]' halving (lanes `i` and `i + 8`, then the 8-lane vector folded 4, 2, 1), then the tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let full = n / 16 * 16;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut lo = _mm256_setzero_ps();
    let mut hi = _mm256_setzero_ps();
    let mut i = 0;
    while i < full {
        // SAFETY: i + 16 <= full <= n, the length of both slices.
        unsafe {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), lo);
            hi = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                hi,
            );
        }
        i += 16;
    }
    let v8 = _mm256_add_ps(lo, hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    let v1 = _mm_add_ss(v2, _mm_shuffle_ps::<0b01>(v2, v2));
    let mut sum = _mm_cvtss_f32(v1);
    for j in full..n {
        sum = a[j].mul_add(b[j], sum);
    }
    sum
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<false>(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], rows: usize, w: &[f32], out: usize) -> Vec<f64> {
        let k = x.len() / rows;
        let mut y = vec![0f64; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..k)
                    .map(|i| f64::from(x[r * k + i]) * f64::from(w[o * k + i]))
                    .sum();
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                ((h >> 8) as f32 / (1u32 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn matches_float64_for_odd_shapes() {
        for (rows, k, out) in [
            (1, 1, 1),
            (3, 17, 5),
            (4, 576, 700),
            (8, 33, 513),
            (2, 1536, 576),
        ] {
            let x = values(rows * k, 1);
            let w = values(out * k, 2);
            let y = matmul_wt(&x, rows, &w, out);
            let want = reference(&x, rows, &w, out);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(*a) - b).abs() <= 1e-5 * (1.0 + b.abs()) * (k as f64).sqrt(),
                    "rows {rows} k {k} out {out} at {i}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn parallel_and_serial_give_the_same_bits() {
        let (rows, k, out) = (4, 300, 1000);
        let x = values(rows * k, 3);
        let w = values(out * k, 4);
        let serial = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| matmul_wt(&x, rows, &w, out));
        let parallel = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap()
            .install(|| matmul_wt(&x, rows, &w, out));
        assert_eq!(serial, parallel);
    }

    #[test]
    fn empty_inputs_give_empty_or_zero_outputs() {
        assert!(matmul_wt(&[], 0, &[], 2).is_empty());
        assert_eq!(dot(&[], &[]), 0.0);
    }
}
