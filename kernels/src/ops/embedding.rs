//! Token embedding: gather rows of the table (forward) and scatter-add the gradient back (backward).

use super::check_len;
use crate::error::KernelError;

/// Every id is below `vocab`; the error names the first that is not.
pub fn check_ids(ids: &[u32], vocab: usize) -> Result<(), KernelError> {
    match ids.iter().position(|&t| t as usize >= vocab) {
        None => Ok(()),
        Some(i) => Err(KernelError::invalid(
            "ids",
            format!("ids[{i}] = {} is outside the vocabulary 0..{vocab}", ids[i]),
        )),
    }
}

/// `out[t] = table[ids[t]]`: `ids.len() x dim`.
pub fn forward(
    table: &[f32],
    vocab: usize,
    dim: usize,
    ids: &[u32],
) -> Result<Vec<f32>, KernelError> {
    check_len("table", table.len(), vocab, dim)?;
    check_ids(ids, vocab)?;
    Ok(ids
        .iter()
        .flat_map(|&t| {
            table[t as usize * dim..(t as usize + 1) * dim]
                .iter()
                .copied()
        })
        .collect())
}

/// `dtable[v] = sum over t with ids[t] == v of dy[t]` (`vocab x dim`), summed in f64.
pub fn backward(
    dy: &[f32],
    ids: &[u32],
    vocab: usize,
    dim: usize,
) -> Result<Vec<f32>, KernelError> {
    check_len("dy", dy.len(), ids.len(), dim)?;
    check_ids(ids, vocab)?;
    let mut acc = vec![0.0f64; vocab * dim];
    for (t, &id) in ids.iter().enumerate() {
        for j in 0..dim {
            acc[id as usize * dim + j] += f64::from(dy[t * dim + j]);
        }
    }
    Ok(acc.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{indices, normal_f32};

    #[test]
    fn gather_and_scatter_add() {
        let (vocab, dim) = (11, 5);
        let table = normal_f32(1, vocab * dim);
        let ids = vec![3u32, 0, 3, 10];
        let out = forward(&table, vocab, dim, &ids).unwrap();
        assert_eq!(&out[..dim], &table[15..20]);
        assert_eq!(&out[3 * dim..], &table[50..55]);
        let dy = normal_f32(2, ids.len() * dim);
        let d = backward(&dy, &ids, vocab, dim).unwrap();
        for j in 0..dim {
            let want = f64::from(dy[j]) + f64::from(dy[2 * dim + j]);
            assert!((f64::from(d[3 * dim + j]) - want).abs() < 1e-6);
            assert_eq!(d[dim + j], 0.0, "row 1 is never used");
        }
        // The gradient is the adjoint of the gather: <gather(T), dy> == <T, scatter(dy)>.
        let ids = indices(3, 40, vocab as u32);
        let dy = normal_f32(4, 40 * dim);
        let g = forward(&table, vocab, dim, &ids).unwrap();
        let s = backward(&dy, &ids, vocab, dim).unwrap();
        let lhs: f64 = g
            .iter()
            .zip(&dy)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let rhs: f64 = table
            .iter()
            .zip(&s)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0));
        assert!(
            forward(&table, vocab, dim, &[11])
                .unwrap_err()
                .to_string()
                .contains("ids[0]")
        );
    }
}
