//! CPU references of the LLaMA training op set (forward and backward), the functions the CUDA kernels in
//! `kernels/cuda/ops.cu` are checked against: fp32 in and out, sums in f64, each tested against float64 math.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod optim;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

use crate::error::KernelError;

/// Checks that a buffer has `rows x cols` values, naming it otherwise.
pub fn check_len(
    what: &'static str,
    got: usize,
    rows: usize,
    cols: usize,
) -> Result<(), KernelError> {
    if got == rows * cols {
        Ok(())
    } else {
        Err(KernelError::invalid(
            what,
            format!("{got} values, expected {rows}x{cols} = {}", rows * cols),
        ))
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    /// Central finite difference of `f` at `x[i]` (f64).
    pub fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64], i: usize, h: f64) -> f64 {
        let (mut p, mut m) = (x.to_vec(), x.to_vec());
        p[i] += h;
        m[i] -= h;
        (f(&p) - f(&m)) / (2.0 * h)
    }

    pub fn close(got: f32, want: f64, tol: f64) -> bool {
        (f64::from(got) - want).abs() <= tol * (1.0 + want.abs())
    }
}
