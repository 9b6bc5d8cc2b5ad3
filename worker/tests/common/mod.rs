//! Helpers shared by the engine tests (`kernel_engine.rs` on the reference device, `gpu_engine.rs` on CUDA,
//! `engine_training.rs`): where the fixtures are, training examples, both engines on one checkpoint with the same
//! adapters, one micro-batch's loss and gradients, and the bounds the two engines must agree within.
//!
//! # Tolerances
//!
//! The reference device sums in f64 and rounds each result once, so next to the candle engine it is exact to
//! first order; the difference is the candle engine's own f32 error. A sum of `n` products in f32 is off by at
//! most `gamma_n = n u / (1 - n u)` (u = 2^-24) relative to the sum of its absolute terms (Higham, *Accuracy and
//! Stability of Numerical Algorithms*, 3.1), and, with probability at least `1 - 2 exp(-lambda^2 / 2)`, by at
//! most `lambda sqrt(n) u` (Higham and Mary, "A new approach to probabilistic rounding error analysis", SISC
//! 2019). The worst case is vacuous at SmolLM2's depth and vocabulary (it exceeds 1), so the tests use the
//! probabilistic bound with `lambda = 6` (failure probability below 1e-7 per reduction). To first order the errors
//! add along the longest chain of reductions from the input to a quantity: per block 9 (RMSNorm, the q/k/v
//! product, the attention scores, the softmax sum, the value product, the output product, RMSNorm, the gate/up
//! product, the down product), then 3 for the final norm, the head and the log-sum-exp; the backward pass walks
//! the chain again. So the loss may differ by `(9 L + 3) lambda sqrt(N) u` and a gradient by twice that, relative
//! to their magnitude, with `N` the longest reduction of the model (its vocabulary). A wrong backward misses
//! these bounds by orders of magnitude. A device that itself sums in f32 (CUDA) may be off by the bound on its
//! own side too, so against it the engines may differ by twice the bound.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tandem_experiments::manifest::LossMask;
use tandem_kernels::testdata::normal_f32;
use tandem_worker::engine::kernel::KernelLlama;
use tandem_worker::engine::kernel::device::Device;
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::lora::{ForwardCtx, LoraConfig};
use tandem_worker::engine::model::{Decoder, TrainExample};
use tandem_worker::engine::qlora;
use tandem_worker::engine::train::trainable::{CpuModel, Trainable};

/// The worker crate's folder: `TANDEM_WORKER_DIR` when set (a prebuilt test binary run from another checkout,
/// as `kernels/gpu-check.sh` does), else the folder it was built in.
pub fn worker_dir() -> PathBuf {
    std::env::var_os("TANDEM_WORKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A test fixture's folder.
pub fn fixture(name: &str) -> PathBuf {
    worker_dir().join("tests/fixtures").join(name)
}

/// The unit roundoff of f32.
pub const U: f64 = f32::EPSILON as f64 / 2.0;

/// `lambda` of the probabilistic bound in the module docs.
pub const LAMBDA: f64 = 6.0;

/// The bound of the module docs on the loss's relative difference (`passes = 1`) or a gradient's
/// (`passes = 2`).
pub fn bound(cpu: &Llama, passes: usize) -> f64 {
    let c = &cpu.config;
    let longest = c.vocab_size.max(c.hidden_size).max(c.intermediate_size);
    (passes * (9 * c.num_hidden_layers + 3)) as f64 * LAMBDA * (longest as f64).sqrt() * U
}

/// SmolLM2-135M as `scripts/fetch-models.sh` caches it, or why it is not there.
pub fn smollm2() -> Result<PathBuf, String> {
    let p = worker_dir().join("../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Ok(p)
    } else {
        Err(format!(
            "{} is not in the cache (run scripts/fetch-models.sh)",
            p.display()
        ))
    }
}

/// The thesis's adapter (q_proj and v_proj, dropout 0.05) at a small rank.
pub fn thesis_lora() -> LoraConfig {
    LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    }
}

/// Both engines on one checkpoint (a fixture folder or a `.gguf` file), with the same adapters on every
/// projection.
pub fn engines<D: Device>(
    model: &Path,
    device: D,
    nf4: bool,
    lora: &LoraConfig,
) -> (Llama, KernelLlama<D>, tokenizers::Tokenizer) {
    let (mut cpu, tok) = llama::load(model).unwrap();
    if nf4 {
        qlora::quantize_model(&mut cpu).unwrap();
    }
    let mut ck = llama::open(model).unwrap();
    let mut kern = KernelLlama::load(Arc::new(device), &mut ck, nf4).unwrap();
    CpuModel(&mut cpu).add_adapter(lora, 7).unwrap();
    kern.add_adapter(lora, 7).unwrap();
    assert_eq!(
        CpuModel(&mut cpu).params().unwrap(),
        kern.params().unwrap(),
        "both engines start from PEFT's initialisation"
    );
    // B starts at zero, which would leave A's gradient zero: give both engines the same random adapters.
    let random: Vec<Vec<f32>> = kern
        .params()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| {
            normal_f32(100 + i as u64, p.len())
                .into_iter()
                .map(|v| v * 0.05)
                .collect()
        })
        .collect();
    CpuModel(&mut cpu).set_params(&random).unwrap();
    kern.set_params(&random).unwrap();
    (cpu, kern, tok)
}

/// Adapters of rank 4 on all seven projections.
pub fn all_modules(dropout: f64) -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .map(String::from)
        .to_vec(),
    }
}

/// Training examples from (findings, impression) pairs: the prompt `Findings: {findings} Impression:` (with the
/// tokenizer's special tokens), the target ` {impression}` and token 1.
pub fn examples(tok: &tokenizers::Tokenizer, rows: &[(&str, &str)]) -> Vec<TrainExample> {
    rows.iter()
        .map(|(i, t)| {
            let prompt = tok
                .encode(format!("Findings: {i} Impression:"), true)
                .unwrap()
                .get_ids()
                .to_vec();
            let mut target = tok
                .encode(format!(" {t}"), false)
                .unwrap()
                .get_ids()
                .to_vec();
            target.push(1);
            TrainExample { prompt, target }
        })
        .collect()
}

/// Three short report-style examples.
pub fn batch(tok: &tokenizers::Tokenizer) -> Vec<TrainExample> {
    examples(
        tok,
        &[
            (
                "The heart is normal in size. The lungs are clear.",
                "No acute disease.",
            ),
            ("Small left pleural effusion.", "Effusion."),
            (
                "No focal consolidation. No pneumothorax. Stable.",
                "No acute process.",
            ),
        ],
    )
}

/// Loss and gradients of one micro-batch on an engine.
pub fn loss_and_grads(
    m: &mut dyn Trainable,
    b: &[TrainExample],
    mask: LossMask,
    ctx: &ForwardCtx,
) -> (f64, Vec<Vec<f32>>) {
    let mut grads: Vec<Vec<f32>> = m
        .params()
        .unwrap()
        .iter()
        .map(|p| vec![0f32; p.len()])
        .collect();
    let loss = m
        .accumulate(b, mask, ctx, 2, &mut grads)
        .unwrap()
        .expect("tokens counted");
    (loss, grads)
}

pub fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()))
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    })
}

/// How far apart the two engines are on one micro-batch: the loss's relative difference and the worst
/// gradient tensor's difference relative to its largest entry, each as a fraction of its bound (<= 1 passes).
pub fn gradient_check<D: Device>(
    model: &Path,
    device: D,
    nf4: bool,
    lora: &LoraConfig,
) -> (f64, f64) {
    let name = model.file_name().unwrap_or_default().to_string_lossy();
    let dropout = lora.dropout;
    let (mut cpu, mut kern, tok) = engines(model, device, nf4, lora);
    let b = batch(&tok);
    let ctx = ForwardCtx::train(3, 1, 1);
    let (l_cpu, g_cpu) = loss_and_grads(&mut CpuModel(&mut cpu), &b, LossMask::Prompt, &ctx);
    let (l_ref, g_ref) = loss_and_grads(&mut kern, &b, LossMask::Prompt, &ctx);
    let loss_ratio = ((l_cpu - l_ref).abs() / l_ref.abs()) / bound(&cpu, 1);
    let mut grad_ratio = 0f64;
    for (i, (gc, gr)) in g_cpu.iter().zip(&g_ref).enumerate() {
        let scale = max_abs(gr);
        assert!(scale > 0.0, "{name}: gradient {i} is zero");
        grad_ratio = grad_ratio.max(max_diff(gc, gr) / scale / bound(&cpu, 2));
    }
    eprintln!(
        "{name} on {} nf4={nf4} dropout={dropout}: loss {l_cpu:.8} vs {l_ref:.8}; worst difference / bound: loss {loss_ratio:.2e}, gradients {grad_ratio:.2e}",
        kern.device.describe()
    );
    (loss_ratio, grad_ratio)
}

/// The prefill logits of left-padded prompts on both engines: their worst difference relative to the largest
/// logit, as a fraction of the forward bound.
pub fn prefill_ratio<D: Device>(cpu: &Llama, kern: &KernelLlama<D>, prompts: &[Vec<u32>]) -> f64 {
    let (_, l_cpu) = cpu.start(prompts).unwrap();
    let (_, l_kern) = kern.start(prompts).unwrap();
    let (l_cpu, l_kern) = (
        l_cpu.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        l_kern.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    max_diff(&l_cpu, &l_kern) / max_abs(&l_kern) / bound(cpu, 1)
}
