//! Cross-entropy over the vocabulary with an ignore index (PyTorch's default -100): per-row log-sum-exp, the
//! summed loss and the count of rows that count; backward `dlogits = (softmax - onehot) * scale` on counted rows.

use super::check_len;
use crate::error::KernelError;

/// The forward result.
#[derive(Clone, Debug, PartialEq)]
pub struct CrossEntropy {
    /// Sum of `lse - logit[target]` over counted rows (f64).
    pub loss_sum: f64,
    /// Rows whose target is not the ignore index.
    pub count: usize,
    /// Per-row log-sum-exp (kept for the backward).
    pub lse: Vec<f32>,
}

impl CrossEntropy {
    /// The mean loss, or `None` ("not available") when every row is ignored.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.loss_sum / self.count as f64)
    }
}

/// Every target is in `0..vocab` or the ignore index; the error names the first that is not.
pub fn check_targets(targets: &[i32], vocab: usize, ignore_index: i32) -> Result<(), KernelError> {
    match targets
        .iter()
        .position(|&t| t != ignore_index && (t < 0 || t as usize >= vocab))
    {
        None => Ok(()),
        Some(i) => Err(KernelError::invalid(
            "targets",
            format!(
                "targets[{i}] = {} is neither in 0..{vocab} nor the ignore index {ignore_index}",
                targets[i]
            ),
        )),
    }
}

/// Forward over `rows x vocab` logits.
pub fn forward(
    logits: &[f32],
    rows: usize,
    vocab: usize,
    targets: &[i32],
    ignore_index: i32,
) -> Result<CrossEntropy, KernelError> {
    check_len("logits", logits.len(), rows, vocab)?;
    check_len("targets", targets.len(), rows, 1)?;
    check_targets(targets, vocab, ignore_index)?;
    let mut lse = Vec::with_capacity(rows);
    let (mut loss_sum, mut count) = (0.0f64, 0usize);
    for r in 0..rows {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let l = max
            + row
                .iter()
                .map(|&v| (f64::from(v) - max).exp())
                .sum::<f64>()
                .ln();
        lse.push(l as f32);
        if targets[r] != ignore_index {
            loss_sum += l - f64::from(row[targets[r] as usize]);
            count += 1;
        }
    }
    Ok(CrossEntropy {
        loss_sum,
        count,
        lse,
    })
}

/// Backward: `dlogits[r][j] = (exp(logit - lse) - [j == target]) * scale` on counted rows, 0 on ignored ones
/// (`scale` is usually `1 / count` for a mean loss).
pub fn backward(
    logits: &[f32],
    rows: usize,
    vocab: usize,
    targets: &[i32],
    ignore_index: i32,
    lse: &[f32],
    scale: f32,
) -> Result<Vec<f32>, KernelError> {
    check_len("logits", logits.len(), rows, vocab)?;
    check_len("targets", targets.len(), rows, 1)?;
    check_len("lse", lse.len(), rows, 1)?;
    check_targets(targets, vocab, ignore_index)?;
    let mut d = vec![0.0f32; rows * vocab];
    for r in 0..rows {
        if targets[r] == ignore_index {
            continue;
        }
        for j in 0..vocab {
            let p = (f64::from(logits[r * vocab + j]) - f64::from(lse[r])).exp();
            let onehot = if j == targets[r] as usize { 1.0 } else { 0.0 };
            d[r * vocab + j] = ((p - onehot) * f64::from(scale)) as f32;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{close, fd};
    use crate::testdata::normal_f32;

    #[test]
    fn loss_and_gradient_match_float64_with_ignored_rows() {
        let (rows, vocab) = (4, 9);
        let logits: Vec<f32> = normal_f32(1, rows * vocab)
            .iter()
            .map(|v| v * 4.0 + 30.0)
            .collect();
        let targets = [2, -100, 8, 0];
        let ce = forward(&logits, rows, vocab, &targets, -100).unwrap();
        assert_eq!(ce.count, 3);
        let lw: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
        let loss = |l: &[f64]| -> f64 {
            (0..rows)
                .filter(|&r| targets[r] != -100)
                .map(|r| {
                    let row = &l[r * vocab..(r + 1) * vocab];
                    row.iter().map(|v| v.exp()).sum::<f64>().ln() - row[targets[r] as usize]
                })
                .sum::<f64>()
                / 3.0
        };
        assert!((ce.mean().unwrap() - loss(&lw)).abs() < 1e-5);
        let d = backward(&logits, rows, vocab, &targets, -100, &ce.lse, 1.0 / 3.0).unwrap();
        for (i, &di) in d.iter().enumerate() {
            assert!(close(di, fd(&loss, &lw, i, 1e-4), 1e-5), "d[{i}]");
        }
        assert!(d[vocab..2 * vocab].iter().all(|&v| v == 0.0), "ignored row");
        let all_ignored = forward(&logits, rows, vocab, &[-100; 4], -100).unwrap();
        assert_eq!(all_ignored.mean(), None);
        assert!(
            forward(&logits, rows, vocab, &[9, 0, 0, 0], -100)
                .unwrap_err()
                .to_string()
                .contains("targets[0]")
        );
    }
}
