//! RMSNorm (LLaMA): `y = x / sqrt(mean(x^2) + eps) * weight`, per row; backward gives dx and dweight.

use super::check_len;
use crate::error::KernelError;

/// Forward over `rows x dim`; returns `y` and each row's `rstd = 1 / sqrt(mean(x^2) + eps)` for the backward.
pub fn forward(
    x: &[f32],
    rows: usize,
    dim: usize,
    weight: &[f32],
    eps: f32,
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    check_len("x", x.len(), rows, dim)?;
    check_len("weight", weight.len(), 1, dim)?;
    let mut y = Vec::with_capacity(rows * dim);
    let mut rstd = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            / dim as f64;
        let rs = 1.0 / (ms + f64::from(eps)).sqrt();
        rstd.push(rs as f32);
        y.extend(
            row.iter()
                .zip(weight)
                .map(|(&v, &w)| (f64::from(v) * rs * f64::from(w)) as f32),
        );
    }
    Ok((y, rstd))
}

/// Backward: `dx = rstd * (dy*w) - rstd^3 / dim * x * sum(dy*w*x)`, `dweight = sum over rows of dy * x * rstd`.
pub fn backward(
    x: &[f32],
    rows: usize,
    dim: usize,
    weight: &[f32],
    rstd: &[f32],
    dy: &[f32],
) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    check_len("x", x.len(), rows, dim)?;
    check_len("dy", dy.len(), rows, dim)?;
    check_len("weight", weight.len(), 1, dim)?;
    check_len("rstd", rstd.len(), rows, 1)?;
    let mut dx = Vec::with_capacity(rows * dim);
    let mut dw = vec![0.0f64; dim];
    for r in 0..rows {
        let rs = f64::from(rstd[r]);
        let xr = &x[r * dim..(r + 1) * dim];
        let dr = &dy[r * dim..(r + 1) * dim];
        let dot: f64 = (0..dim)
            .map(|j| f64::from(dr[j]) * f64::from(weight[j]) * f64::from(xr[j]))
            .sum();
        for j in 0..dim {
            let g = f64::from(dr[j]) * f64::from(weight[j]);
            dx.push((rs * g - rs * rs * rs / dim as f64 * f64::from(xr[j]) * dot) as f32);
            dw[j] += f64::from(dr[j]) * f64::from(xr[j]) * rs;
        }
    }
    Ok((dx, dw.into_iter().map(|v| v as f32).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{close, fd};
    use crate::testdata::normal_f32;

    #[test]
    fn forward_and_backward_match_float64() {
        let (rows, dim, eps) = (3, 7, 1e-5f32);
        let x = normal_f32(1, rows * dim);
        let w = normal_f32(2, dim);
        let dy = normal_f32(3, rows * dim);
        let (y, rstd) = forward(&x, rows, dim, &w, eps).unwrap();
        let f = |xs: &[f64], ws: &[f64]| -> Vec<f64> {
            (0..rows)
                .flat_map(|r| {
                    let row = &xs[r * dim..(r + 1) * dim];
                    let rs = 1.0
                        / (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + f64::from(eps))
                            .sqrt();
                    (0..dim)
                        .map(move |j| row[j] * rs * ws[j])
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let xw: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let ww: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let dyw: Vec<f64> = dy.iter().map(|&v| f64::from(v)).collect();
        for (a, b) in y.iter().zip(f(&xw, &ww)) {
            assert!(close(*a, b, 1e-6));
        }
        let (dx, dw) = backward(&x, rows, dim, &w, &rstd, &dy).unwrap();
        let loss_x = |xs: &[f64]| f(xs, &ww).iter().zip(&dyw).map(|(a, b)| a * b).sum::<f64>();
        let loss_w = |ws: &[f64]| f(&xw, ws).iter().zip(&dyw).map(|(a, b)| a * b).sum::<f64>();
        for (i, &g) in dx.iter().enumerate() {
            assert!(close(g, fd(&loss_x, &xw, i, 1e-5), 1e-5), "dx[{i}]");
        }
        for (j, &g) in dw.iter().enumerate() {
            assert!(close(g, fd(&loss_w, &ww, j, 1e-5), 1e-5), "dw[{j}]");
        }
    }
}
