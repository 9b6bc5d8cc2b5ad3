//! Fused LoRA linear layer, CPU reference: forward `y = x W^T + s * (dropout(x) A^T) B^T` with `s = alpha / r`,
//! and backward (dA, dB and dx through the frozen W), the functions the CUDA kernels are checked against.
//!
//! Shapes (all row-major fp32): `x` is `tokens x in`, the frozen `W` is `out x in` (dense, or an [`Nf4Tensor`]
//! dequantised first), `A` is `r x in`, `B` is `out x r`, `y` is `tokens x out`. Dropout is inverted dropout with a
//! caller-supplied keep mask (`tokens x in`, 0 or 1): `dropout(x) = x * mask / (1 - p)`; without a mask (or with
//! `p = 0`) it is the identity. Sums are accumulated in f64 and rounded once to fp32, so results do not depend on
//! the order of the work and are the same bits on every run.

use crate::error::KernelError;
use crate::nf4::Nf4Tensor;

/// The sizes of one LoRA linear layer applied to a batch of tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraDims {
    /// Rows of `x` (tokens in the batch).
    pub tokens: usize,
    /// Input features (columns of `x` and `W`).
    pub in_features: usize,
    /// Output features (rows of `W`).
    pub out_features: usize,
    /// LoRA rank `r` (rows of `A`, columns of `B`).
    pub rank: usize,
}

/// The adapter's hyper-parameters and the dropout draw of this step.
#[derive(Clone, Copy, Debug)]
pub struct LoraParams<'a> {
    /// Scale `s = alpha / r`.
    pub scale: f32,
    /// Dropout probability `p` in [0, 1).
    pub dropout: f32,
    /// Keep mask, `tokens x in`, 0 or 1; `None` means keep everything.
    pub keep_mask: Option<&'a [u8]>,
}

/// What the forward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraForward {
    /// `tokens x out`.
    pub y: Vec<f32>,
    /// `dropout(x) A^T`, `tokens x r`, kept for the backward pass.
    pub h: Vec<f32>,
}

/// What the backward pass returns.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraGrads {
    /// `r x in`.
    pub da: Vec<f32>,
    /// `out x r`.
    pub db: Vec<f32>,
    /// `tokens x in`.
    pub dx: Vec<f32>,
}

impl LoraDims {
    fn check(
        &self,
        name: &'static str,
        got: usize,
        rows: usize,
        cols: usize,
    ) -> Result<(), KernelError> {
        if got == rows * cols {
            Ok(())
        } else {
            Err(KernelError::invalid(
                name,
                format!("{got} values, expected {rows}x{cols} = {}", rows * cols),
            ))
        }
    }

    fn validate(&self) -> Result<(), KernelError> {
        let LoraDims {
            tokens,
            in_features,
            out_features,
            rank,
        } = *self;
        if tokens == 0 || in_features == 0 || out_features == 0 || rank == 0 {
            return Err(KernelError::invalid(
                "dims",
                format!("{self:?}: every size must be at least 1"),
            ));
        }
        Ok(())
    }
}

impl LoraParams<'_> {
    fn validate(&self, dims: &LoraDims) -> Result<(), KernelError> {
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(KernelError::invalid(
                "dropout",
                format!("{} is outside [0, 1)", self.dropout),
            ));
        }
        KernelError::check_finite("scale", &[self.scale])?;
        if let Some(mask) = self.keep_mask {
            dims.check("keep_mask", mask.len(), dims.tokens, dims.in_features)?;
            if let Some(i) = mask.iter().position(|&m| m > 1) {
                return Err(KernelError::invalid(
                    "keep_mask",
                    format!("keep_mask[{i}] is {}, expected 0 or 1", mask[i]),
                ));
            }
        }
        Ok(())
    }

    /// The factor element `i` of `x` is multiplied by: `mask[i] / (1 - p)`.
    fn dropout_factor(&self, i: usize) -> f64 {
        match self.keep_mask {
            None => 1.0,
            Some(mask) => f64::from(mask[i]) / (1.0 - f64::from(self.dropout)),
        }
    }

    fn dropped(&self, x: &[f32]) -> Vec<f64> {
        x.iter()
            .enumerate()
            .map(|(i, &v)| f64::from(v) * self.dropout_factor(i))
            .collect()
    }
}

/// `out[i][j] = sum_k a[i][k] * b[j][k]` (a is `m x k`, b is `n x k`), in f64.
fn matmul_nt(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        for j in 0..n {
            out[i * n + j] = row
                .iter()
                .zip(&b[j * k..(j + 1) * k])
                .map(|(p, q)| p * q)
                .sum();
        }
    }
    out
}

/// `out[i][j] = sum_t a[t][i] * b[t][j]` (a is `t x m`, b is `t x n`), in f64.
fn matmul_tn(a: &[f64], b: &[f64], t: usize, m: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for s in 0..t {
        for i in 0..m {
            let av = a[s * m + i];
            if av == 0.0 {
                continue;
            }
            for j in 0..n {
                out[i * n + j] += av * b[s * n + j];
            }
        }
    }
    out
}

/// `out[i][j] = sum_k a[i][k] * b[k][j]` (a is `m x k`, b is `k x n`), in f64.
fn matmul_nn(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for s in 0..k {
            let av = a[i * k + s];
            for j in 0..n {
                out[i * n + j] += av * b[s * n + j];
            }
        }
    }
    out
}

fn widen(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn narrow(v: Vec<f64>) -> Vec<f32> {
    v.into_iter().map(|x| x as f32).collect()
}

/// The forward pass with a dense frozen weight.
pub fn forward(
    dims: LoraDims,
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    params: LoraParams<'_>,
) -> Result<LoraForward, KernelError> {
    let LoraDims {
        tokens: m,
        in_features: k,
        out_features: n,
        rank: r,
    } = dims;
    dims.validate()?;
    dims.check("x", x.len(), m, k)?;
    dims.check("w", w.len(), n, k)?;
    dims.check("a", a.len(), r, k)?;
    dims.check("b", b.len(), n, r)?;
    params.validate(&dims)?;
    let xw = widen(x);
    let h = matmul_nt(&params.dropped(x), &widen(a), m, r, k);
    let base = matmul_nt(&xw, &widen(w), m, n, k);
    let adapter = matmul_nt(&h, &widen(b), m, n, r);
    let s = f64::from(params.scale);
    let y = base
        .iter()
        .zip(&adapter)
        .map(|(p, q)| (p + s * q) as f32)
        .collect();
    Ok(LoraForward { y, h: narrow(h) })
}

/// The forward pass with an NF4 frozen weight (`out x in`), dequantised to fp32 first.
pub fn forward_nf4(
    dims: LoraDims,
    x: &[f32],
    w: &Nf4Tensor,
    a: &[f32],
    b: &[f32],
    params: LoraParams<'_>,
) -> Result<LoraForward, KernelError> {
    check_nf4_shape(&dims, w)?;
    forward(dims, x, &w.dequantize(), a, b, params)
}

fn check_nf4_shape(dims: &LoraDims, w: &Nf4Tensor) -> Result<(), KernelError> {
    if (w.rows(), w.cols()) != (dims.out_features, dims.in_features) {
        return Err(KernelError::invalid(
            "w",
            format!(
                "NF4 weight is {}x{}, expected {}x{}",
                w.rows(),
                w.cols(),
                dims.out_features,
                dims.in_features
            ),
        ));
    }
    Ok(())
}

/// The backward pass: given `dy` (`tokens x out`) and the forward's `h`, the gradients of A, B and x.
///
/// `dB = s dy^T h`, `dh = s dy B`, `dA = dh^T dropout(x)`, `dx = dy W + (dh A) * mask / (1 - p)`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dims: LoraDims,
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    params: LoraParams<'_>,
    h: &[f32],
    dy: &[f32],
) -> Result<LoraGrads, KernelError> {
    let LoraDims {
        tokens: m,
        in_features: k,
        out_features: n,
        rank: r,
    } = dims;
    dims.validate()?;
    dims.check("x", x.len(), m, k)?;
    dims.check("w", w.len(), n, k)?;
    dims.check("a", a.len(), r, k)?;
    dims.check("b", b.len(), n, r)?;
    dims.check("h", h.len(), m, r)?;
    dims.check("dy", dy.len(), m, n)?;
    params.validate(&dims)?;
    let s = f64::from(params.scale);
    let dyw = widen(dy);
    let db: Vec<f64> = matmul_tn(&dyw, &widen(h), m, n, r)
        .into_iter()
        .map(|v| s * v)
        .collect();
    let dh: Vec<f64> = matmul_nn(&dyw, &widen(b), m, r, n)
        .into_iter()
        .map(|v| s * v)
        .collect();
    let da = matmul_tn(&dh, &params.dropped(x), m, r, k);
    let dx_base = matmul_nn(&dyw, &widen(w), m, k, n);
    let dx_adapter = matmul_nn(&dh, &widen(a), m, k, r);
    let dx = (0..m * k)
        .map(|i| (dx_base[i] + dx_adapter[i] * params.dropout_factor(i)) as f32)
        .collect();
    Ok(LoraGrads {
        da: narrow(da),
        db: narrow(db),
        dx,
    })
}

/// The backward pass with an NF4 frozen weight.
#[allow(clippy::too_many_arguments)]
pub fn backward_nf4(
    dims: LoraDims,
    x: &[f32],
    w: &Nf4Tensor,
    a: &[f32],
    b: &[f32],
    params: LoraParams<'_>,
    h: &[f32],
    dy: &[f32],
) -> Result<LoraGrads, KernelError> {
    check_nf4_shape(&dims, w)?;
    backward(dims, x, &w.dequantize(), a, b, params, h, dy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{keep_mask, normal_f32};

    struct Case {
        dims: LoraDims,
        x: Vec<f32>,
        w: Vec<f32>,
        a: Vec<f32>,
        b: Vec<f32>,
        mask: Vec<u8>,
        dy: Vec<f32>,
    }

    fn case(seed: u64, m: usize, k: usize, n: usize, r: usize) -> Case {
        Case {
            dims: LoraDims {
                tokens: m,
                in_features: k,
                out_features: n,
                rank: r,
            },
            x: normal_f32(seed, m * k),
            w: normal_f32(seed + 1, n * k),
            a: normal_f32(seed + 2, r * k),
            b: normal_f32(seed + 3, n * r),
            mask: keep_mask(seed + 4, m * k, 0.9),
            dy: normal_f32(seed + 5, m * n),
        }
    }

    /// y in float64 through the merged weight: x W^T + s dropout(x) (B A)^T, a different association.
    fn y_merged(c: &Case, s: f64, p: f64) -> Vec<f64> {
        let LoraDims {
            tokens: m,
            in_features: k,
            out_features: n,
            rank: r,
        } = c.dims;
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0;
                for q in 0..k {
                    let ba: f64 = (0..r)
                        .map(|t| f64::from(c.b[j * r + t]) * f64::from(c.a[t * k + q]))
                        .sum();
                    let xd = f64::from(c.x[i * k + q]) * f64::from(c.mask[i * k + q]) / (1.0 - p);
                    acc += f64::from(c.x[i * k + q]) * f64::from(c.w[j * k + q]) + s * xd * ba;
                }
                y[i * n + j] = acc;
            }
        }
        y
    }

    fn rel_err(got: &[f32], want: &[f64]) -> f64 {
        let num: f64 = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| (f64::from(g) - w).powi(2))
            .sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        (num / den).sqrt()
    }

    #[test]
    fn forward_matches_float64_merged_weight() {
        for (m, k, n, r) in [(3, 17, 5, 2), (8, 64, 33, 8), (1, 130, 7, 64)] {
            let c = case(m as u64 * 100 + r as u64, m, k, n, r);
            let params = LoraParams {
                scale: 2.0,
                dropout: 0.1,
                keep_mask: Some(&c.mask),
            };
            let out = forward(c.dims, &c.x, &c.w, &c.a, &c.b, params).unwrap();
            let err = rel_err(&out.y, &y_merged(&c, 2.0, 0.1));
            assert!(err < 1e-6, "{m}x{k}x{n} r={r}: {err}");
        }
    }

    /// The loss `L = sum(dy * y)` in float64 as a function of every parameter, for finite differences.
    fn loss(c: &Case, s: f64, p: f64) -> f64 {
        y_merged(c, s, p)
            .iter()
            .zip(&c.dy)
            .map(|(y, &d)| y * f64::from(d))
            .sum()
    }

    #[test]
    fn backward_matches_finite_differences() {
        let c = case(42, 4, 12, 6, 3);
        let (s, p) = (1.5, 0.25);
        let params = LoraParams {
            scale: s as f32,
            dropout: p as f32,
            keep_mask: Some(&c.mask),
        };
        let fwd = forward(c.dims, &c.x, &c.w, &c.a, &c.b, params).unwrap();
        let g = backward(c.dims, &c.x, &c.w, &c.a, &c.b, params, &fwd.h, &c.dy).unwrap();
        // L is linear in each of A, B and x separately only up to products, so use a central difference with a
        // step whose f32 rounding stays exact (powers of two).
        let step = 1.0 / 64.0;
        let check = |name: &str, grad: &[f32], get: &dyn Fn(&mut Case) -> &mut Vec<f32>| {
            for (i, &analytic) in grad.iter().enumerate() {
                let mut plus = clone_case(&c);
                get(&mut plus)[i] += step as f32;
                let mut minus = clone_case(&c);
                get(&mut minus)[i] -= step as f32;
                let fd = (loss(&plus, s, p) - loss(&minus, s, p)) / (2.0 * step);
                let tol = 1e-5 * (1.0 + fd.abs());
                assert!(
                    (f64::from(analytic) - fd).abs() < tol,
                    "{name}[{i}]: {analytic} vs {fd}"
                );
            }
        };
        check("dA", &g.da, &|c| &mut c.a);
        check("dB", &g.db, &|c| &mut c.b);
        check("dx", &g.dx, &|c| &mut c.x);
    }

    fn clone_case(c: &Case) -> Case {
        Case {
            dims: c.dims,
            x: c.x.clone(),
            w: c.w.clone(),
            a: c.a.clone(),
            b: c.b.clone(),
            mask: c.mask.clone(),
            dy: c.dy.clone(),
        }
    }

    #[test]
    fn no_mask_means_no_dropout_and_nf4_matches_dense() {
        let c = case(7, 5, 128, 9, 4);
        let plain = LoraParams {
            scale: 0.5,
            dropout: 0.0,
            keep_mask: None,
        };
        let ones = vec![1u8; c.x.len()];
        let masked = LoraParams {
            scale: 0.5,
            dropout: 0.0,
            keep_mask: Some(&ones),
        };
        let a = forward(c.dims, &c.x, &c.w, &c.a, &c.b, plain).unwrap();
        assert_eq!(a, forward(c.dims, &c.x, &c.w, &c.a, &c.b, masked).unwrap());
        let q = Nf4Tensor::quantize(&c.w, 9, 128, true).unwrap();
        let via_nf4 = forward_nf4(c.dims, &c.x, &q, &c.a, &c.b, plain).unwrap();
        assert_eq!(
            via_nf4,
            forward(c.dims, &c.x, &q.dequantize(), &c.a, &c.b, plain).unwrap()
        );
        let g1 = backward_nf4(c.dims, &c.x, &q, &c.a, &c.b, plain, &via_nf4.h, &c.dy).unwrap();
        let g2 = backward(
            c.dims,
            &c.x,
            &q.dequantize(),
            &c.a,
            &c.b,
            plain,
            &via_nf4.h,
            &c.dy,
        )
        .unwrap();
        assert_eq!(g1, g2);
    }

    #[test]
    fn bad_shapes_and_parameters_are_refused() {
        let c = case(1, 2, 8, 3, 2);
        let ok = LoraParams {
            scale: 1.0,
            dropout: 0.0,
            keep_mask: None,
        };
        let err = forward(c.dims, &c.x[1..], &c.w, &c.a, &c.b, ok)
            .unwrap_err()
            .to_string();
        assert!(err.contains("x") && err.contains("expected 2x8"), "{err}");
        let bad = LoraParams { dropout: 1.0, ..ok };
        assert!(
            forward(c.dims, &c.x, &c.w, &c.a, &c.b, bad)
                .unwrap_err()
                .to_string()
                .contains("dropout")
        );
        let two = vec![2u8; 16];
        let bad = LoraParams {
            keep_mask: Some(&two),
            ..ok
        };
        assert!(forward(c.dims, &c.x, &c.w, &c.a, &c.b, bad).is_err());
        let q = Nf4Tensor::quantize(&c.w, 8, 3, false).unwrap();
        assert!(
            forward_nf4(c.dims, &c.x, &q, &c.a, &c.b, ok)
                .unwrap_err()
                .to_string()
                .contains("NF4")
        );
    }
}
