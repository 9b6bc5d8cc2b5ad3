//! AdamW with decoupled weight decay (PyTorch's algorithm and defaults) and the linear warmup/decay schedule of
//! `transformers.get_linear_schedule_with_warmup`.

/// One parameter's Adam moments.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

/// AdamW over flat f32 parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Updates done so far.
    pub t: u64,
    pub moments: Vec<Moments>,
}

impl AdamW {
    /// PyTorch's defaults: betas (0.9, 0.999), eps 1e-8.
    pub fn new(sizes: &[usize], weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            moments: sizes
                .iter()
                .map(|&n| Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
                .collect(),
        }
    }

    /// One update of every parameter with its gradient, at learning rate `lr` (torch.optim.AdamW, no amsgrad).
    pub fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>], lr: f64) {
        self.t += 1;
        let t = self.t as i32;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let eps = self.eps as f32;
        for ((p, g), mom) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            for i in 0..p.len() {
                p[i] *= decay;
                mom.m[i] = b1 * mom.m[i] + (1.0 - b1) * g[i];
                mom.v[i] = b2 * mom.v[i] + (1.0 - b2) * g[i] * g[i];
                let denom = mom.v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * mom.m[i] / denom;
            }
        }
    }
}

/// Learning rate of optimizer update `step` (0-based): linear warmup from 0 over `warmup` updates, then linear
/// decay to 0 at `total`.
pub fn linear_schedule(base_lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
    };
    base_lr * factor
}

/// The global L2 norm of all gradients, and the factor `min(1, max_norm / (norm + 1e-6))` that clips them
/// (torch.nn.utils.clip_grad_norm_).
pub fn clip_factor(grads: &[Vec<f32>], max_norm: f64) -> (f64, f64) {
    let sq: f64 = grads
        .iter()
        .flatten()
        .map(|&g| f64::from(g) * f64::from(g))
        .sum();
    let norm = sq.sqrt();
    let factor = if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0)
    } else {
        1.0
    };
    (norm, factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=6): 0, .5, 1, .75, .5, .25, 0
        let lrs: Vec<f64> = (0..7).map(|s| linear_schedule(1.0, s, 2, 6)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient() {
        let mut opt = AdamW::new(&[2], 0.0);
        let mut p = vec![vec![1.0f32, -1.0]];
        opt.step(&mut p, &[vec![0.5, -2.0]], 0.1);
        // First Adam step: m_hat / sqrt(v_hat) = sign(g).
        assert!(
            (p[0][0] - 0.9).abs() < 1e-6 && (p[0][1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
    }

    #[test]
    fn weight_decay_is_decoupled() {
        let mut opt = AdamW::new(&[1], 0.1);
        let mut p = vec![vec![2.0f32]];
        opt.step(&mut p, &[vec![0.0]], 0.5);
        // Zero gradient: only the decay p * (1 - lr * wd) acts.
        assert!((p[0][0] - 2.0 * 0.95).abs() < 1e-6);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let (norm, f) = clip_factor(&[vec![3.0, 4.0]], 1.0);
        assert!((norm - 5.0).abs() < 1e-12);
        assert!((f - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_factor(&[vec![0.3, 0.4]], 1.0).1, 1.0);
    }
}
