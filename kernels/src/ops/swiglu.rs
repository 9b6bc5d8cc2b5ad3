//! SwiGLU (LLaMA's MLP gate): `y = silu(gate) * up`, `silu(g) = g * sigmoid(g)`; backward gives d(gate), d(up).

use super::check_len;
use crate::error::KernelError;

fn sigmoid(g: f64) -> f64 {
    1.0 / (1.0 + (-g).exp())
}

/// Elementwise forward.
pub fn forward(gate: &[f32], up: &[f32]) -> Result<Vec<f32>, KernelError> {
    check_len("up", up.len(), gate.len(), 1)?;
    Ok(gate
        .iter()
        .zip(up)
        .map(|(&g, &u)| (f64::from(g) * sigmoid(f64::from(g)) * f64::from(u)) as f32)
        .collect())
}

/// Backward: `dgate = dy * up * sigmoid(g) * (1 + g * (1 - sigmoid(g)))`, `dup = dy * silu(g)`.
pub fn backward(gate: &[f32], up: &[f32], dy: &[f32]) -> Result<(Vec<f32>, Vec<f32>), KernelError> {
    check_len("up", up.len(), gate.len(), 1)?;
    check_len("dy", dy.len(), gate.len(), 1)?;
    let mut dg = Vec::with_capacity(gate.len());
    let mut du = Vec::with_capacity(gate.len());
    for i in 0..gate.len() {
        let (g, u, d) = (f64::from(gate[i]), f64::from(up[i]), f64::from(dy[i]));
        let s = sigmoid(g);
        dg.push((d * u * s * (1.0 + g * (1.0 - s))) as f32);
        du.push((d * g * s) as f32);
    }
    Ok((dg, du))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::close;
    use crate::testdata::normal_f32;

    #[test]
    fn matches_float64_and_finite_differences() {
        let g = normal_f32(1, 50)
            .iter()
            .map(|v| v * 3.0)
            .collect::<Vec<_>>();
        let u = normal_f32(2, 50);
        let dy = normal_f32(3, 50);
        let y = forward(&g, &u).unwrap();
        let (dg, du) = backward(&g, &u, &dy).unwrap();
        let silu = |x: f64| x / (1.0 + (-x).exp());
        for i in 0..50 {
            let (gi, ui) = (f64::from(g[i]), f64::from(u[i]));
            assert!(close(y[i], silu(gi) * ui, 1e-6));
            let h = 1e-6;
            let fd = (silu(gi + h) - silu(gi - h)) / (2.0 * h) * ui * f64::from(dy[i]);
            assert!(close(dg[i], fd, 1e-6), "dg[{i}]");
            assert!(close(du[i], silu(gi) * f64::from(dy[i]), 1e-6));
        }
    }
}
