//! The kernel engine (explicit forward and backward over `tandem-kernels`' operations) on the reference device,
//! checked against the candle CPU engine on the tiny LLaMA fixtures: the loss, every adapter gradient, the
//! adapter after three AdamW steps, greedy and beam tokens, PEFT adapters both ways, and the whole training loop.
//! A device with one deliberately broken backward operation must fail the same comparisons.
//!
//! The tolerances, and why, are documented in `tests/common/mod.rs` (shared with `gpu_engine.rs`).

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{
    U, all_modules, batch, bound, engines, fixture, gradient_check, loss_and_grads, max_abs,
    prefill_ratio, smollm2, thesis_lora,
};

use tandem_experiments::manifest::{LossMask, TrainingSpec};
use tandem_kernels::lora::LoraDims;
use tandem_kernels::ops::attention::{AttentionDims, CachedDims};
use tandem_kernels::ops::optim::{self, AdamW, AdamWState};
use tandem_worker::engine::generate::{self, GenerateConfig};
use tandem_worker::engine::kernel::device::{
    Adapter, AdapterGrads, ChunkLoss, Device, LinearGrads,
};
use tandem_worker::engine::kernel::{KernelLlama, Reference};
use tandem_worker::engine::llama;
use tandem_worker::engine::lora::{ForwardCtx, LoraConfig};
use tandem_worker::engine::peft;
use tandem_worker::engine::train::trainable::{CpuModel, Trainable};
use tandem_worker::engine::train::{self, TrainConfig, TrainEvent};

#[test]
fn loss_and_every_adapter_gradient_match_the_cpu_engine() {
    for (name, nf4, dropout) in [
        ("tiny-llama", false, 0.0),
        ("tiny-llama", false, 0.1),
        ("tiny-llama", true, 0.1),
        ("tiny-llama-tied", false, 0.1),
    ] {
        let (loss, grads) = gradient_check(&fixture(name), Reference, nf4, &all_modules(dropout));
        assert!(loss <= 1.0, "{name}: loss off by {loss:.2} of its bound");
        assert!(
            grads <= 1.0,
            "{name}: gradients off by {grads:.2} of their bound"
        );
    }
}

#[test]
fn a_broken_backward_fails_the_gradient_check() {
    for fault in [Fault::RopeNotInverted, Fault::AdapterGradientTransposed] {
        let (loss, grads) = gradient_check(
            &fixture("tiny-llama"),
            Faulty { fault },
            false,
            &all_modules(0.1),
        );
        assert!(loss <= 1.0, "{fault:?} leaves the forward pass alone");
        assert!(
            grads > 10.0,
            "{fault:?}: a broken backward must miss the bound by far, got {grads:.2}"
        );
    }
}

#[test]
fn the_adapter_after_three_adamw_steps_matches_the_cpu_engine() {
    let lora = all_modules(0.1);
    let (mut cpu, mut kern, tok) = engines(&fixture("tiny-llama"), Reference, true, &lora);
    let b = batch(&tok);
    let sizes: Vec<usize> = kern.params().unwrap().iter().map(Vec::len).collect();
    let (mut opt_cpu, mut opt_ref) = (AdamWState::new(&sizes), AdamWState::new(&sizes));
    let tau = bound(&cpu, 2);
    let lr = 1e-3f32;
    // Per entry: how far AdamW may move the two copies apart. An entry's update m/(sqrt(v) + eps) changes by at
    // most 4 * dg / |g| relative to a gradient error dg (and never by more than 2 lr per step).
    let mut allowed: Vec<Vec<f64>> = sizes.iter().map(|&n| vec![0f64; n]).collect();
    for step in 0..3u64 {
        let ctx = ForwardCtx::train(5, step, 0);
        let (_, mut g_cpu) = loss_and_grads(&mut CpuModel(&mut cpu), &b, LossMask::Pad, &ctx);
        let (_, mut g_ref) = loss_and_grads(&mut kern, &b, LossMask::Pad, &ctx);
        for ((al, gc), gr) in allowed.iter_mut().zip(&g_cpu).zip(&g_ref) {
            let err = tau * max_abs(gr);
            for ((a, &c), &r) in al.iter_mut().zip(gc).zip(gr) {
                let g = f64::from(c).abs().min(f64::from(r).abs());
                *a += f64::from(lr) * (4.0 * err / g).min(2.0);
            }
        }
        let rule = AdamW::torch(lr, 0.01);
        for (opt, m, g) in [
            (
                &mut opt_cpu,
                &mut CpuModel(&mut cpu) as &mut dyn Trainable,
                &mut g_cpu,
            ),
            (&mut opt_ref, &mut kern as &mut dyn Trainable, &mut g_ref),
        ] {
            optim::clip_global_norm(
                &mut g.iter_mut().map(Vec::as_mut_slice).collect::<Vec<_>>(),
                1.0,
            );
            let mut p = m.params().unwrap();
            opt.update(&rule, &mut p, g).unwrap();
            m.set_params(&p).unwrap();
        }
    }
    let (p_cpu, p_ref) = (CpuModel(&mut cpu).params().unwrap(), kern.params().unwrap());
    let mut worst = 0f64;
    let mut moved = 0usize;
    for ((c, r), al) in p_cpu.iter().zip(&p_ref).zip(&allowed) {
        for ((&x, &y), &a) in c.iter().zip(r).zip(al) {
            let d = (f64::from(x) - f64::from(y)).abs();
            worst = worst.max(d / (a + f64::from(y).abs() * U * 8.0));
            moved += usize::from(d > 0.0);
        }
    }
    eprintln!(
        "after 3 AdamW steps: worst difference / allowed {worst:.2e}; {moved} entries differ at all"
    );
    assert!(
        worst <= 1.0,
        "adapters apart by {worst:.2} of what the gradient bound allows"
    );
}

#[test]
fn greedy_and_beam_tokens_match_the_cpu_engine() {
    for nf4 in [false, true] {
        let lora = all_modules(0.0);
        let (cpu, kern, tok) = engines(&fixture("tiny-llama"), Reference, nf4, &lora);
        let prompts: Vec<Vec<u32>> = batch(&tok).into_iter().map(|e| e.prompt).collect();
        // Prefill logits of left-padded rows agree within the forward bound.
        let ratio = prefill_ratio(&cpu, &kern, &prompts);
        assert!(
            ratio <= 1.0,
            "prefill logits off by {ratio:.2} of the bound"
        );
        for cfg in [
            GenerateConfig::greedy(12),
            GenerateConfig {
                num_beams: 4,
                length_penalty: 1.0,
                ..GenerateConfig::greedy(10)
            },
            GenerateConfig {
                num_beams: 3,
                do_sample: true,
                temperature: 0.8,
                top_k: 20,
                seed: 11,
                repetition_penalty: 1.2,
                min_new_tokens: 3,
                ..GenerateConfig::greedy(10)
            },
        ] {
            let a = generate::generate(&cpu, &prompts, &cfg).unwrap();
            let b = generate::generate(&kern, &prompts, &cfg).unwrap();
            assert_eq!(
                a, b,
                "nf4={nf4} beams={} sample={}",
                cfg.num_beams, cfg.do_sample
            );
            assert!(a.iter().any(|r| !r.is_empty()));
        }
    }
}

#[test]
fn smollm2_loss_gradients_and_greedy_tokens_match_the_cpu_engine() {
    let model = match smollm2() {
        Ok(m) => m,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let (loss, grads) = gradient_check(&model, Reference, true, &thesis_lora());
    assert!(loss <= 1.0, "SmolLM2: loss off by {loss:.2} of its bound");
    assert!(
        grads <= 1.0,
        "SmolLM2: gradients off by {grads:.2} of their bound"
    );
    let (cpu, kern, tok) = engines(&model, Reference, true, &thesis_lora());
    let prompts: Vec<Vec<u32>> = batch(&tok).into_iter().map(|e| e.prompt).collect();
    let cfg = GenerateConfig::greedy(8);
    let a = generate::generate(&cpu, &prompts, &cfg).unwrap();
    let b = generate::generate(&kern, &prompts, &cfg).unwrap();
    assert_eq!(a, b);
}

#[test]
fn a_failing_kernel_fails_the_step_naming_the_kernel_and_its_shapes() {
    let lora = all_modules(0.0);
    let (_, mut kern, tok) = engines(
        &fixture("tiny-llama"),
        Faulty {
            fault: Fault::OutOfMemory,
        },
        false,
        &lora,
    );
    let b = batch(&tok);
    let mut grads: Vec<Vec<f32>> = kern
        .params()
        .unwrap()
        .iter()
        .map(|p| vec![0f32; p.len()])
        .collect();
    let e = kern
        .accumulate(&b, LossMask::Prompt, &ForwardCtx::eval(), 1, &mut grads)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention_backward") && e.contains("OUT_OF_MEMORY") && e.contains("q_heads: 4"),
        "{e}"
    );
    assert!(
        grads.iter().flatten().all(|&g| g == 0.0),
        "no partial gradient leaks out"
    );
    // The model is still usable: the forward pass runs.
    assert!(kern.loss_sum(&b, LossMask::Prompt).is_ok());
}

fn spec(max_steps: usize) -> TrainingSpec {
    TrainingSpec {
        batch_size: 2,
        grad_accum: 2,
        lr: 5e-3,
        warmup_steps: 1,
        weight_decay: 0.01,
        epochs: 4.0,
        max_grad_norm: 1.0,
        eval_every: 2,
        log_every: 1,
        checkpoint_every: 2,
        checkpoints_kept: 10,
        early_stopping_patience: 0,
        max_length: 128,
        loss_mask: LossMask::Prompt,
        max_steps: Some(max_steps),
    }
}

#[test]
fn the_training_loop_runs_on_the_kernel_engine_and_its_adapter_loads_in_the_cpu_engine() {
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    let open = || {
        let mut ck = llama::open(&fixture("tiny-llama")).unwrap();
        KernelLlama::load(Arc::new(Reference), &mut ck, true).unwrap()
    };
    let (_, tok) = llama::load(&fixture("tiny-llama")).unwrap();
    let data = [batch(&tok), batch(&tok)].concat();
    let (tr, val) = data.split_at(4);
    let config = TrainConfig {
        training: spec(4),
        lora: lora.clone(),
        seed: 3,
        resume: false,
    };
    let run = |dir: &Path, config: &TrainConfig, stop_after: Option<usize>| {
        let mut m = open();
        let mut events = Vec::new();
        let steps = std::cell::Cell::new(0);
        let r = train::run(
            &mut m,
            tr,
            val,
            config,
            dir,
            &mut |e| {
                if matches!(e, TrainEvent::Step(_)) {
                    steps.set(steps.get() + 1);
                }
                events.push(e)
            },
            &|| match stop_after.is_some_and(|s| steps.get() >= s) {
                true => train::Control::Suspend,
                false => train::Control::Continue,
            },
        );
        (r, m)
    };
    let whole = tempfile::tempdir().unwrap();
    let (summary, trained) = run(whole.path(), &config, None);
    let summary = summary.unwrap();
    assert_eq!(summary.steps, 4);
    assert!(summary.losses.iter().all(|l| l.is_finite()));
    assert!(summary.best_val_loss.is_some());
    // Stopped after 1 update, resumed: the same adapter, bit for bit.
    let parts = tempfile::tempdir().unwrap();
    let (stopped, _) = run(parts.path(), &config, Some(1));
    assert!(matches!(
        stopped,
        Err(tandem_worker::engine::EngineError::Stopped { step: 1, .. })
    ));
    let resumed = TrainConfig {
        resume: true,
        ..config.clone()
    };
    let (again, _) = run(parts.path(), &resumed, None);
    assert_eq!(again.unwrap().losses, summary.losses);
    let read = |dir: &Path| std::fs::read(dir.join("adapter").join(peft::WEIGHTS_FILE)).unwrap();
    assert_eq!(read(whole.path()), read(parts.path()));
    // The PEFT adapter loads in the candle engine with the same values.
    let (mut cpu, _) = llama::load(&fixture("tiny-llama")).unwrap();
    peft::load(&mut cpu, &summary.adapter_dir, Some(4)).unwrap();
    assert_eq!(
        CpuModel(&mut cpu).params().unwrap(),
        trained.params().unwrap()
    );
    // And a CPU adapter loads in the kernel engine.
    let mut other = open();
    other.load_adapter(&summary.adapter_dir, Some(4)).unwrap();
    assert_eq!(other.params().unwrap(), trained.params().unwrap());
    assert!(other.load_adapter(&summary.adapter_dir, Some(8)).is_err());
}

#[test]
fn quantised_weights_are_the_cpu_engines_codes_and_take_a_quarter_of_the_bytes() {
    let mut ck = llama::open(&fixture("tiny-llama")).unwrap();
    let dense = KernelLlama::load(Arc::new(Reference), &mut ck, false).unwrap();
    let mut ck = llama::open(&fixture("tiny-llama")).unwrap();
    let nf4 = KernelLlama::load(Arc::new(Reference), &mut ck, true).unwrap();
    let linear_bytes = |m: &KernelLlama<Reference>| {
        m.linears()
            .map(|l| Reference.frozen_bytes(&l.weight))
            .sum::<usize>()
    };
    let (d, q) = (linear_bytes(&dense), linear_bytes(&nf4));
    // 4 bits per weight plus one 8-bit absmax code per 64: 8.25 bytes per 64 values vs 256, plus scales.
    assert!(q * 7 < d, "{q} NF4 bytes vs {d} dense");
    assert!(dense.frozen_bytes() > nf4.frozen_bytes());
}

// ---- a device with one broken operation -------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The backward rotates the gradient forward again instead of back (a missing RoPE term).
    RopeNotInverted,
    /// dA comes back as the transpose of the right values (reshaped, as a transposed kernel output would be).
    AdapterGradientTransposed,
    /// The attention backward fails as a CUDA launch out of memory would.
    OutOfMemory,
}

/// The reference device with one fault.
struct Faulty {
    fault: Fault,
}

type B = Vec<f32>;

impl Device for Faulty {
    type Buf = B;
    type Frozen = <Reference as Device>::Frozen;
    type Mask = Vec<u8>;

    fn describe(&self) -> String {
        format!("faulty reference ({:?})", self.fault)
    }
    fn upload(&self, v: &[f32]) -> tandem_worker::engine::Result<B> {
        Reference.upload(v)
    }
    fn download(&self, b: &B) -> tandem_worker::engine::Result<B> {
        Reference.download(b)
    }
    fn len(&self, b: &B) -> usize {
        b.len()
    }
    fn frozen(
        &self,
        v: &[f32],
        r: usize,
        c: usize,
        nf4: bool,
    ) -> tandem_worker::engine::Result<Self::Frozen> {
        Reference.frozen(v, r, c, nf4)
    }
    fn frozen_bytes(&self, w: &Self::Frozen) -> usize {
        Reference.frozen_bytes(w)
    }
    fn embedding(
        &self,
        t: &B,
        v: usize,
        d: usize,
        ids: &[u32],
    ) -> tandem_worker::engine::Result<B> {
        Reference.embedding(t, v, d, ids)
    }
    fn rmsnorm(
        &self,
        x: &B,
        r: usize,
        d: usize,
        w: &B,
        eps: f32,
    ) -> tandem_worker::engine::Result<(B, B)> {
        Reference.rmsnorm(x, r, d, w, eps)
    }
    fn rmsnorm_backward(
        &self,
        x: &B,
        r: usize,
        d: usize,
        w: &B,
        s: &B,
        dy: &B,
    ) -> tandem_worker::engine::Result<B> {
        Reference.rmsnorm_backward(x, r, d, w, s, dy)
    }
    fn rope(
        &self,
        x: &B,
        t: usize,
        h: usize,
        d: usize,
        p: &[u32],
        f: &[f32],
        sign: f32,
    ) -> tandem_worker::engine::Result<B> {
        let sign = match self.fault {
            Fault::RopeNotInverted => 1.0,
            _ => sign,
        };
        Reference.rope(x, t, h, d, p, f, sign)
    }
    fn attention(&self, d: AttentionDims, q: &B, k: &B, v: &B) -> tandem_worker::engine::Result<B> {
        Reference.attention(d, q, k, v)
    }
    fn attention_backward(
        &self,
        d: AttentionDims,
        q: &B,
        k: &B,
        v: &B,
        o: &B,
    ) -> tandem_worker::engine::Result<(B, B, B)> {
        if let Fault::OutOfMemory = self.fault {
            return Err(tandem_worker::engine::EngineError::kernel(
                "attention_backward",
                self.describe(),
                format!("{d:?}"),
                "CUDA_ERROR_OUT_OF_MEMORY",
            ));
        }
        Reference.attention_backward(d, q, k, v, o)
    }
    fn attention_cached(
        &self,
        d: CachedDims,
        pad: &[usize],
        q: &B,
        k: &B,
        v: &B,
    ) -> tandem_worker::engine::Result<B> {
        Reference.attention_cached(d, pad, q, k, v)
    }
    fn swiglu(&self, g: &B, u: &B) -> tandem_worker::engine::Result<B> {
        Reference.swiglu(g, u)
    }
    fn swiglu_backward(&self, g: &B, u: &B, dy: &B) -> tandem_worker::engine::Result<(B, B)> {
        Reference.swiglu_backward(g, u, dy)
    }
    fn add(&self, a: &B, b: &B) -> tandem_worker::engine::Result<B> {
        Reference.add(a, b)
    }
    fn keep_mask(
        &self,
        seed: u64,
        s: u64,
        n: usize,
        p: f32,
    ) -> tandem_worker::engine::Result<Vec<u8>> {
        Reference.keep_mask(seed, s, n, p)
    }
    fn linear(
        &self,
        dims: LoraDims,
        x: &B,
        w: &Self::Frozen,
        a: Option<&Adapter<B>>,
        m: Option<&Vec<u8>>,
    ) -> tandem_worker::engine::Result<(B, Option<B>)> {
        Reference.linear(dims, x, w, a, m)
    }
    fn linear_backward(
        &self,
        dims: LoraDims,
        x: &B,
        w: &Self::Frozen,
        a: Option<&Adapter<B>>,
        m: Option<&Vec<u8>>,
        h: Option<&B>,
        dy: &B,
    ) -> tandem_worker::engine::Result<LinearGrads<B>> {
        let (dx, g) = Reference.linear_backward(dims, x, w, a, m, h, dy)?;
        let g = g.map(|g| match self.fault {
            Fault::AdapterGradientTransposed => {
                let (r, k) = (dims.rank, dims.in_features);
                let da = (0..r * k).map(|i| g.da[(i % r) * k + i / r]).collect();
                AdapterGrads { da, db: g.db }
            }
            _ => g,
        });
        Ok((dx, g))
    }
    fn matmul_nt(
        &self,
        x: &B,
        r: usize,
        w: &B,
        n: usize,
        k: usize,
    ) -> tandem_worker::engine::Result<B> {
        Reference.matmul_nt(x, r, w, n, k)
    }
    fn matmul_nn(
        &self,
        dy: &B,
        r: usize,
        w: &B,
        n: usize,
        k: usize,
    ) -> tandem_worker::engine::Result<B> {
        Reference.matmul_nn(dy, r, w, n, k)
    }
    fn cross_entropy(
        &self,
        l: &B,
        r: usize,
        v: usize,
        t: &[i32],
        s: f32,
    ) -> tandem_worker::engine::Result<(ChunkLoss, B)> {
        Reference.cross_entropy(l, r, v, t, s)
    }
    fn gather_rows(&self, x: &B, w: usize, rows: &[usize]) -> tandem_worker::engine::Result<B> {
        Reference.gather_rows(x, w, rows)
    }
    fn scatter_rows(
        &self,
        x: &B,
        w: usize,
        rows: &[usize],
        total: usize,
    ) -> tandem_worker::engine::Result<B> {
        Reference.scatter_rows(x, w, rows, total)
    }
    fn append_seq(
        &self,
        o: Option<&B>,
        n: &B,
        r: usize,
        ol: usize,
        nl: usize,
        w: usize,
    ) -> tandem_worker::engine::Result<B> {
        Reference.append_seq(o, n, r, ol, nl, w)
    }
}

#[test]
fn a_gpu_job_opens_the_cuda_device_it_was_pinned_to_or_says_why_it_cannot() {
    if std::env::var_os(tandem_worker::engine::kernel::loaded::DEVICE_VAR).is_some() {
        eprintln!("skipped: TANDEM_KERNEL_DEVICE is set for this process");
        return;
    }
    match tandem_worker::engine::kernel::loaded::load_on_gpus(&[0], &fixture("tiny-llama"), true) {
        Ok(m) => assert!(
            m.model.device_name().starts_with("cuda:0"),
            "{}",
            m.model.device_name()
        ),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains("cuda:0") && e.contains("open"), "{e}");
        }
    }
    let e = tandem_worker::engine::kernel::loaded::load_on_gpus(&[], &fixture("tiny-llama"), true)
        .err()
        .expect("no ordinal")
        .to_string();
    assert!(e.contains("no GPU ordinal"), "{e}");
}
