//! Logit processors with transformers' semantics: repetition penalty, temperature, top-k, top-p, and the
//! softmax/log-softmax helpers the decoders use.

/// Sets the scores of `tokens` to minus infinity (transformers' minimum-length processors).
pub fn suppress(scores: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(s) = scores.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Divides positive and multiplies negative scores of every token already in `seen` by `penalty`.
pub fn repetition_penalty(scores: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &t in seen {
        if !done.insert(t) {
            continue;
        }
        if let Some(s) = scores.get_mut(t as usize) {
            *s = if *s < 0.0 { *s * penalty } else { *s / penalty };
        }
    }
}

/// Divides scores by `temperature` (skipped at 1).
pub fn temperature(scores: &mut [f32], temperature: f32) {
    if temperature != 1.0 {
        scores.iter_mut().for_each(|s| *s /= temperature);
    }
}

/// Keeps the `max(k, min_keep)` highest scores (ties with the k-th kept), the rest set to -inf; `k = 0` skips.
pub fn top_k(scores: &mut [f32], k: usize, min_keep: usize) {
    if k == 0 {
        return;
    }
    let k = k.max(min_keep).min(scores.len());
    let mut sorted: Vec<f32> = scores.to_vec();
    sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let kth = sorted[k - 1];
    scores
        .iter_mut()
        .filter(|s| **s < kth)
        .for_each(|s| *s = f32::NEG_INFINITY);
}

/// Nucleus filter: removes the lowest-probability tokens whose cumulative probability is at most `1 - p`,
/// keeping at least `min_keep`; `p >= 1` skips.
pub fn top_p(scores: &mut [f32], p: f32, min_keep: usize) {
    if p >= 1.0 {
        return;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Ascending, stable (torch.sort of ties keeps index order on CPU).
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    let sorted: Vec<f32> = order.iter().map(|&i| scores[i]).collect();
    let probs = softmax(&sorted);
    let mut cum = 0f32;
    let n = scores.len();
    let mut remove = vec![false; n];
    for (j, p_j) in probs.iter().enumerate() {
        cum += p_j;
        remove[j] = cum <= 1.0 - p;
    }
    for r in remove.iter_mut().skip(n.saturating_sub(min_keep)) {
        *r = false;
    }
    for (j, &i) in order.iter().enumerate() {
        if remove[j] {
            scores[i] = f32::NEG_INFINITY;
        }
    }
}

/// Softmax of a row (f32, max-subtracted).
pub fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Log-softmax of a row.
pub fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    row.iter().map(|&v| v - lse).collect()
}

/// Index of the highest score (the first one on ties).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_follows_sign() {
        let mut s = vec![2.0, -2.0, 1.0];
        repetition_penalty(&mut s, &[0, 1, 1], 2.0);
        assert_eq!(s, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn top_k_keeps_ties_and_minimum() {
        let mut s = vec![1.0, 3.0, 3.0, 0.0];
        top_k(&mut s, 1, 1);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, 3.0, f32::NEG_INFINITY]);
        let mut s = vec![1.0, 3.0, 2.0];
        top_k(&mut s, 1, 2);
        assert_eq!(s, vec![f32::NEG_INFINITY, 3.0, 2.0]);
    }

    #[test]
    fn top_p_removes_the_tail() {
        // probabilities ~ [0.665, 0.245, 0.09]: p = 0.8 keeps the two largest.
        let mut s = vec![2.0, 1.0, 0.0];
        top_p(&mut s, 0.8, 1);
        assert_eq!(s, vec![2.0, 1.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn softmaxes_are_consistent() {
        let row = [0.5f32, -1.0, 2.0];
        let p = softmax(&row);
        let lp = log_softmax(&row);
        for (a, b) in p.iter().zip(&lp) {
            assert!((a.ln() - b).abs() < 1e-6);
        }
        assert_eq!(argmax(&row), 2);
    }
}
