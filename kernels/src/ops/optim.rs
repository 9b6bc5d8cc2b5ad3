//! The one definition of the optimizer step that every engine takes: AdamW (PyTorch's `torch.optim.AdamW`,
//! decoupled weight decay, no amsgrad) over the adapter parameters, clipping of the global gradient norm (PyTorch's
//! `clip_grad_norm_`), and the linear warmup/decay schedule of `transformers.get_linear_schedule_with_warmup`.
//!
//! The CPU training loop of `tandem-worker` runs [`AdamW::step`] (through [`AdamWState`]) and the CUDA kernel
//! `adamw_step` in `kernels/cuda/ops.cu` mirrors it operation for operation: fp32 arithmetic in the same order, each
//! operation rounded on its own (the kernel uses the `__f*_rn` intrinsics, so nothing is fused into an FMA), with
//! the bias corrections from [`bias_corrections`] on the host. So a CPU and a GPU step from the same state are
//! bit-identical.

use crate::error::KernelError;

/// AdamW hyper-parameters of one update.
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

/// The bias corrections `(1 - beta1^step, 1 - beta2^step)` of update `step` (from 1), computed in f64 and rounded
/// to fp32: the CPU step and the CUDA launcher both take them from here.
pub fn bias_corrections(beta1: f32, beta2: f32, step: u64) -> (f32, f32) {
    // Beyond 2^31 updates beta^step has long underflowed to 0, so the clamp changes nothing.
    let n = step.min(i32::MAX as u64) as i32;
    let bc = |beta: f32| (1.0 - f64::from(beta).powi(n)) as f32;
    (bc(beta1), bc(beta2))
}

impl AdamW {
    /// PyTorch's defaults (betas 0.9 and 0.999, eps 1e-8) with learning rate `lr` and weight decay
    /// `weight_decay`.
    pub fn torch(lr: f32, weight_decay: f32) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// One step (`step` counts from 1), in place, in fp32 with `(bc1, bc2)` = [`bias_corrections`]:
    /// `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g; p = p (1 - lr wd) - lr (m / bc1) / (sqrt(v / bc2) + eps)`,
    /// each operation rounded to fp32 in that order (as the CUDA kernel).
    pub fn step(
        &self,
        step: u64,
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
        let Self {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = *self;
        let (bc1, bc2) = bias_corrections(beta1, beta2, step);
        for i in 0..n {
            let gi = grads[i];
            let mi = beta1 * m[i] + (1.0 - beta1) * gi;
            let vi = beta2 * v[i] + (1.0 - beta2) * gi * gi;
            m[i] = mi;
            v[i] = vi;
            params[i] =
                params[i] * (1.0 - lr * weight_decay) - lr * (mi / bc1) / ((vi / bc2).sqrt() + eps);
        }
        Ok(())
    }
}

/// One parameter's Adam moments (PyTorch's `exp_avg` and `exp_avg_sq`).
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// First moment.
    pub m: Vec<f32>,
    /// Second moment.
    pub v: Vec<f32>,
}

/// The state of AdamW over several flat parameters: the updates done and each parameter's moments (what a
/// checkpoint saves).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamWState {
    /// Updates done so far (the next one is `step + 1`).
    pub step: u64,
    /// One entry per parameter, in parameter order.
    pub moments: Vec<Moments>,
}

impl AdamWState {
    /// Zero moments for parameters of `sizes` values, no update done.
    pub fn new(sizes: &[usize]) -> Self {
        Self {
            step: 0,
            moments: sizes
                .iter()
                .map(|&n| Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                })
                .collect(),
        }
    }

    /// One update of every parameter with its gradient under `opt`; nothing changes when a size does not match.
    pub fn update(
        &mut self,
        opt: &AdamW,
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
    ) -> Result<(), KernelError> {
        // The tensor counts (index None), then each parameter's size.
        let counts = (None, params.len(), grads.len(), self.moments.len());
        let sizes = params
            .iter()
            .zip(grads)
            .zip(&self.moments)
            .enumerate()
            .map(|(i, ((p, g), mom))| (Some(i), p.len(), g.len(), mom.m.len()));
        if let Some((index, p, g, held)) = std::iter::once(counts)
            .chain(sizes)
            .find(|&(_, p, g, held)| p != held || g != held)
        {
            let what = index.map_or("parameter count".to_string(), |i| format!("parameter {i}"));
            return Err(KernelError::invalid(
                "adamw",
                format!(
                    "{what}: {p} in the parameters, {g} in the gradients, {held} in the optimizer"
                ),
            ));
        }
        let step = self
            .step
            .checked_add(1)
            .ok_or_else(|| KernelError::invalid("step", "the AdamW step counter overflows"))?;
        for ((p, g), mom) in params.iter_mut().zip(grads).zip(&mut self.moments) {
            opt.step(step, p, g, &mut mom.m, &mut mom.v)?;
        }
        self.step = step;
        Ok(())
    }
}

/// The L2 norm of all gradients together (f64, summed in order).
pub fn global_norm(grads: &[&[f32]]) -> f64 {
    grads
        .iter()
        .flat_map(|g| g.iter())
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt()
}

/// The factor the gradients are multiplied by: `min(1, max_norm / (norm + 1e-6))`; 1 (no clipping, as the
/// Hugging Face Trainer) when `max_norm` is not positive.
pub fn clip_factor(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 {
        (max_norm / (norm + 1e-6)).min(1.0) as f32
    } else {
        1.0
    }
}

/// Scales every gradient by [`clip_factor`] (in fp32, as the CUDA `scale_inplace`) when the global norm exceeds
/// `max_norm`; returns the norm before.
pub fn clip_global_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let norm = global_norm(&grads.iter().map(|g| &**g).collect::<Vec<_>>());
    let factor = clip_factor(norm, max_norm);
    if factor < 1.0 {
        grads
            .iter_mut()
            .flat_map(|g| g.iter_mut())
            .for_each(|v| *v *= factor);
    }
    norm
}

/// Learning rate of optimizer update `step` (0-based): linear warmup from 0 over `warmup` updates, then linear
/// decay to 0 at `total` (`transformers.get_linear_schedule_with_warmup`).
pub fn linear_schedule(base_lr: f64, step: usize, warmup: usize, total: usize) -> f64 {
    let factor = if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        ((total as f64 - step as f64) / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
    };
    base_lr * factor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::normal_f32;

    #[test]
    fn adamw_first_steps_follow_the_formula() {
        let opt = AdamW::torch(1e-3, 0.01);
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
        assert!(opt.step(3, &mut p, &[0.0], &mut m, &mut v).is_err());
    }

    #[test]
    fn first_step_moves_by_lr_against_the_gradient() {
        let mut state = AdamWState::new(&[2]);
        let mut p = vec![vec![1.0f32, -1.0]];
        state
            .update(&AdamW::torch(0.1, 0.0), &mut p, &[vec![0.5, -2.0]])
            .unwrap();
        // First Adam step: m_hat / sqrt(v_hat) = sign(g).
        assert!(
            (p[0][0] - 0.9).abs() < 1e-6 && (p[0][1] + 0.9).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(state.step, 1);
    }

    #[test]
    fn weight_decay_is_decoupled() {
        let mut state = AdamWState::new(&[1]);
        let mut p = vec![vec![2.0f32]];
        state
            .update(&AdamW::torch(0.5, 0.1), &mut p, &[vec![0.0]])
            .unwrap();
        // Zero gradient: only the decay p * (1 - lr * wd) acts.
        assert!((p[0][0] - 2.0 * 0.95).abs() < 1e-6);
    }

    /// torch.optim.AdamW's single-tensor algorithm in f64 (`p *= 1 - lr wd; m.lerp_(g, 1 - b1);
    /// v = b2 v + (1 - b2) g^2; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)`).
    fn torch_adamw_f64(
        opt: &AdamW,
        step: i32,
        p: &mut [f64],
        g: &[f32],
        m: &mut [f64],
        v: &mut [f64],
    ) {
        let (lr, b1, b2, eps, wd) = (
            f64::from(opt.lr),
            f64::from(opt.beta1),
            f64::from(opt.beta2),
            f64::from(opt.eps),
            f64::from(opt.weight_decay),
        );
        let (bc1, bc2) = (1.0 - b1.powi(step), 1.0 - b2.powi(step));
        for i in 0..p.len() {
            let g = f64::from(g[i]);
            p[i] *= 1.0 - lr * wd;
            m[i] += (g - m[i]) * (1.0 - b1);
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + eps);
        }
    }

    #[test]
    fn many_steps_track_torch_in_f64() {
        let n = 4096;
        let opt = AdamW::torch(2e-3, 0.01);
        let mut p = normal_f32(3, n);
        let mut p64: Vec<f64> = p.iter().map(|&x| f64::from(x)).collect();
        let mut state = AdamWState::new(&[n]);
        let (mut m64, mut v64) = (vec![0f64; n], vec![0f64; n]);
        for step in 1..=50 {
            let g: Vec<f32> = normal_f32(100 + step as u64, n)
                .iter()
                .map(|x| x * 0.1)
                .collect();
            torch_adamw_f64(&opt, step, &mut p64, &g, &mut m64, &mut v64);
            let mut params = vec![p];
            state.update(&opt, &mut params, &[g]).unwrap();
            p = params.pop().unwrap();
        }
        let worst = p
            .iter()
            .zip(&p64)
            .map(|(&a, &b)| (f64::from(a) - b).abs() / b.abs().max(1.0))
            .fold(0.0, f64::max);
        // fp32 rounds 1 - lr wd (up to 2^-25 relative, the same sign every update) and each new p (half an ulp):
        // over 50 updates a few 1e-6 of max(|p|, 1), as torch in fp32.
        assert!(worst < 1e-5, "largest difference {worst}");
        let mom = &state.moments[0];
        for i in 0..n {
            assert!((f64::from(mom.m[i]) - m64[i]).abs() < 1e-6 * (1.0 + m64[i].abs()));
            assert!((f64::from(mom.v[i]) - v64[i]).abs() < 1e-6 * (1.0 + v64[i].abs()));
        }
    }

    /// The inputs of the pinned AdamW run, exact in fp32 (`kernels/tools/emu/ops_check.cpp` builds the same):
    /// `p_i = (i - 50) / 32`, and at step `s` `g_i = (((7 i + 3 s) mod 11) - 5) / 128`.
    fn pinned_inputs(n: usize) -> (Vec<f32>, impl Fn(u64) -> Vec<f32>) {
        let p = (0..n).map(|i| (i as f32 - 50.0) * 0.031_25).collect();
        let g = move |s: u64| {
            (0..n as u64)
                .map(|i| (((i * 7 + s * 3) % 11) as f32 - 5.0) * 0.007_812_5)
                .collect()
        };
        (p, g)
    }

    /// FNV-1a over the fp32 bits (little-endian) of `p`, then `m`, then `v`.
    fn fnv_bits(parts: &[&[f32]]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in parts
            .iter()
            .flat_map(|x| x.iter())
            .flat_map(|x| x.to_bits().to_le_bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    #[test]
    fn three_pinned_steps_match_the_emulated_cuda_kernel() {
        let n = 100;
        let (mut p, grads) = pinned_inputs(n);
        let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
        let opt = AdamW::torch(1e-3, 0.01);
        for step in 1..=3 {
            opt.step(step, &mut p, &grads(step), &mut m, &mut v)
                .unwrap();
        }
        // The same hash as `adamw_step` run on the CPU emulator by kernels/tools/emu/ops_check.cpp: the kernel's
        // fp32 operations, in its order, give these bits.
        assert_eq!(
            fnv_bits(&[&p, &m, &v]),
            PINNED_ADAMW,
            "{:#018x}",
            fnv_bits(&[&p, &m, &v])
        );
    }

    const PINNED_ADAMW: u64 = 0x2801_e7e8_83f5_76e8;

    #[test]
    fn a_state_update_is_all_or_nothing() {
        let mut state = AdamWState::new(&[2, 3]);
        let before = state.clone();
        let mut p = vec![vec![1.0f32; 2], vec![1.0f32; 2]];
        let e = state
            .update(
                &AdamW::torch(0.1, 0.0),
                &mut p,
                &[vec![1.0; 2], vec![1.0; 2]],
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameter 1"), "{e}");
        assert_eq!(state, before);
        assert_eq!(p, vec![vec![1.0f32; 2], vec![1.0f32; 2]]);
        state.step = u64::MAX;
        let mut p = vec![vec![1.0f32; 2], vec![1.0f32; 3]];
        let g = vec![vec![1.0; 2], vec![1.0; 3]];
        assert!(state.update(&AdamW::torch(0.1, 0.0), &mut p, &g).is_err());
    }

    #[test]
    fn bias_corrections_survive_any_step() {
        assert_eq!(
            bias_corrections(0.9, 0.999, 1).0,
            (1.0 - 0.9f32 as f64) as f32
        );
        assert_eq!(bias_corrections(0.9, 0.999, u64::MAX), (1.0, 1.0));
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
        clip_global_norm(&mut [&mut a], 0.0);
        assert_eq!(a, copy, "no positive limit, no clipping");
    }

    #[test]
    fn clip_factor_is_torchs() {
        let norm = global_norm(&[&[3.0, 4.0]]);
        assert!((norm - 5.0).abs() < 1e-12);
        assert_eq!(clip_factor(norm, 1.0), (1.0 / (5.0 + 1e-6)) as f32);
        assert_eq!(clip_factor(0.5, 1.0), 1.0);
        assert_eq!(clip_factor(5.0, 0.0), 1.0);
    }

    #[test]
    fn schedule_matches_transformers() {
        // get_linear_schedule_with_warmup(warmup=2, total=6): 0, .5, 1, .75, .5, .25, 0
        let lrs: Vec<f64> = (0..7).map(|s| linear_schedule(1.0, s, 2, 6)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }
}
