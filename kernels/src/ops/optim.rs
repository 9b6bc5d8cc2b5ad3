//! AdamW (PyTorch's `torch.optim.AdamW`, decoupled weight decay) on the adapter parameters, and clipping of
//! the global gradient norm (PyTorch's `clip_grad_norm_`).

use crate::error::KernelError;

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to the root of the second moment.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl AdamW {
    /// One step (`step` counts from 1), in place: `p *= 1 - lr*wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    /// p -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)`. Arithmetic in f64, stored as fp32.
    pub fn step(
        &self,
        step: u32,
        params: &mut [f32],
        grads: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) -> Result<(), KernelError> {
        if step == 0 {
            return Err(KernelError::invalid("step", "AdamW steps count from 1"));
        }
        let n = params.len();
        if grads.len() != n || m.len() != n || v.len() != n {
            return Err(KernelError::invalid(
                "adamw",
                format!(
                    "params {n}, grads {}, m {}, v {}: all must match",
                    grads.len(),
                    m.len(),
                    v.len()
                ),
            ));
        }
        let (lr, b1, b2, eps, wd) = (
            f64::from(self.lr),
            f64::from(self.beta1),
            f64::from(self.beta2),
            f64::from(self.eps),
            f64::from(self.weight_decay),
        );
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for i in 0..n {
            let g = f64::from(grads[i]);
            let mi = b1 * f64::from(m[i]) + (1.0 - b1) * g;
            let vi = b2 * f64::from(v[i]) + (1.0 - b2) * g * g;
            let p = f64::from(params[i]) * (1.0 - lr * wd)
                - lr * (mi / bc1) / ((vi / bc2).sqrt() + eps);
            m[i] = mi as f32;
            v[i] = vi as f32;
            params[i] = p as f32;
        }
        Ok(())
    }
}

/// The L2 norm of all gradients together (f64).
pub fn global_norm(grads: &[&[f32]]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// The factor the gradients are multiplied by: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0) as f32
}

/// Scales every gradient by [`clip_factor`] when the global norm exceeds `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
    let factor = clip_factor(norm, max_norm);
    if factor < 1.0 {
        grads
            .iter_mut()
            .flat_map(|g| g.iter_mut())
            .for_each(|v| *v = (f64::from(*v) * f64::from(factor)) as f32);
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::normal_f32;

    #[test]
    fn adamw_first_steps_follow_the_formula() {
        let opt = AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        };
        let mut p = vec![1.0f32, -2.0];
        let (mut m, mut v) = (vec![0.0f32; 2], vec![0.0f32; 2]);
        opt.step(1, &mut p, &[0.5, -0.25], &mut m, &mut v).unwrap();
        // Step 1: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps) after the decay.
        assert!((f64::from(p[0]) - (1.0 * (1.0 - 1e-5) - 1e-3)).abs() < 1e-6);
        assert!((f64::from(p[1]) - (-2.0 * (1.0 - 1e-5) + 1e-3)).abs() < 1e-6);
        assert!((m[0] - 0.05).abs() < 1e-7 && (v[0] - 0.00025).abs() < 1e-8);
        opt.step(2, &mut p, &[0.5, -0.25], &mut m, &mut v).unwrap();
        let (m2, v2) = (0.9 * 0.05 + 0.1 * 0.5, 0.999 * 0.00025 + 0.001 * 0.25);
        let upd = 1e-3 * (m2 / (1.0 - 0.81)) / ((v2 / (1.0 - 0.998_001f64)).sqrt() + 1e-8);
        let want = (1.0 * (1.0 - 1e-5) - 1e-3) * (1.0 - 1e-5) - upd;
        assert!((f64::from(p[0]) - want).abs() < 1e-6);
        assert!(opt.step(0, &mut p, &[0.0, 0.0], &mut m, &mut v).is_err());
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut a = normal_f32(1, 100);
        let mut b = normal_f32(2, 33);
        let before = global_norm(&[&a, &b]);
        let norm = clip_global_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - before).abs() < 1e-9);
        assert!((global_norm(&[&a, &b]) - 1.0).abs() < 1e-5);
        let copy = a.clone();
        clip_global_norm(&mut [&mut a], 100.0);
        assert_eq!(a, copy, "below the limit nothing changes");
    }
}
