//! The kernel engine on a GPU (the [`Cuda`] device, ordinal 0) against the candle CPU engine. **Not run on a GPU
//! yet.** Every test is `#[ignore]`d; without a GPU (or its driver, or NVRTC) each skips with the reason printed,
//! unless `TANDEM_REQUIRE_GPU=1` (set by `kernels/gpu-check.sh`), which makes a missing GPU a failure.
//!
//! - The loss and every adapter gradient of one micro-batch on the tiny fixtures (dense and NF4, with and without
//!   dropout, tied head), within [`GPU_SLACK`] times the bounds of `tests/common/mod.rs`: the GPU, like candle,
//!   sums in f32, so each engine may be off by the bound on its own side.
//! - Two runs of the same micro-batch give the same bits, and the GPU's NF4 codes are the CPU reference's.
//! - Greedy tokens equal the CPU engine's, and the prefill logits agree within the same slack.
//! - The same on SmolLM2-135M when `.cache/models` has it (`scripts/fetch-models.sh`; skipped with the reason
//!   otherwise).
//! - The tokens per second of one training micro-batch (QLoRA, batch 2 x 256 tokens) on SmolLM2-135M, or on a
//!   model of its shapes with random weights when the file is absent: printed, never asserted.
//!
//! With `TANDEM_GPU_JSON` naming a file, the figures are also written there as one JSON object with a section per
//! test (`kernels/gpu-check.sh` sets it to `$OUT/engine.json`). A prebuilt binary run from another checkout finds
//! the fixtures through `TANDEM_WORKER_DIR` (the `worker/` folder).

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::{
    all_modules, batch, engines, fixture, gradient_check, loss_and_grads, prefill_ratio, smollm2,
};
use serde_json::{Value, json};
use tandem_experiments::manifest::LossMask;
use tandem_kernels::nf4::Nf4Tensor;
use tandem_kernels::testdata::normal_f32;
use tandem_worker::engine::generate::{self, GenerateConfig};
use tandem_worker::engine::kernel::KernelLlama;
use tandem_worker::engine::kernel::cuda::Cuda;
use tandem_worker::engine::kernel::device::Device;
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::lora::{ForwardCtx, LoraConfig};
use tandem_worker::engine::model::TrainExample;
use tandem_worker::engine::tensor_io;

/// How many times the reference device's bounds the GPU may be off (see the module docs).
const GPU_SLACK: f64 = 2.0;

/// Device 0, or `None` with the reason printed and recorded under `section`; with `TANDEM_REQUIRE_GPU=1` a
/// missing GPU fails the test instead.
fn cuda(section: &str) -> Option<Cuda> {
    match Cuda::new(0) {
        Ok(c) => Some(c),
        Err(e) => {
            record(section, json!({ "no_gpu": e.to_string() }));
            let required = std::env::var("TANDEM_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "TANDEM_REQUIRE_GPU=1 but no GPU: {e}");
            println!("skipped: no GPU ({e})");
            None
        }
    }
}

/// Writes `value` under `section` into the JSON object in the file named by `TANDEM_GPU_JSON`, if set.
fn record(section: &str, value: Value) {
    static LOCK: Mutex<()> = Mutex::new(());
    let Some(path) = std::env::var_os("TANDEM_GPU_JSON") else {
        return;
    };
    let _held = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut all: serde_json::Map<String, Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    all.insert(section.into(), value);
    let text = serde_json::to_string_pretty(&Value::Object(all)).unwrap();
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
}

/// Loss and gradient differences on `model`, as fractions of the bounds, recorded as one JSON row.
fn gradient_row(model: &Path, dev: Cuda, nf4: bool, dropout: f64) -> (f64, f64, Value) {
    let (loss, grads) = gradient_check(model, dev, nf4, &all_modules(dropout));
    let name = model.file_name().unwrap_or_default().to_string_lossy();
    let row = json!({
        "model": name, "nf4": nf4, "dropout": dropout,
        "loss_over_bound": loss, "gradients_over_bound": grads, "limit": GPU_SLACK,
    });
    (loss, grads, row)
}

/// Greedy tokens of both engines on the batch's prompts and the prefill logits' difference over its bound.
fn greedy_row(
    cpu: &Llama,
    kern: &KernelLlama<Cuda>,
    tok: &tokenizers::Tokenizer,
) -> (bool, f64, Value) {
    let prompts: Vec<Vec<u32>> = batch(tok).into_iter().map(|e| e.prompt).collect();
    let ratio = prefill_ratio(cpu, kern, &prompts);
    let cfg = GenerateConfig::greedy(12);
    let a = generate::generate(cpu, &prompts, &cfg).unwrap();
    let b = generate::generate(kern, &prompts, &cfg).unwrap();
    assert!(
        a.iter().any(|r| !r.is_empty()),
        "the CPU engine generated nothing"
    );
    let row = json!({ "prefill_over_bound": ratio, "greedy_equal": a == b, "cpu": a, "gpu": b });
    (a == b, ratio, row)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn loss_and_every_adapter_gradient_on_the_gpu_match_the_cpu_engine() {
    let mut rows = Vec::new();
    for (name, nf4, dropout) in [
        ("tiny-llama", false, 0.0),
        ("tiny-llama", false, 0.1),
        ("tiny-llama", true, 0.1),
        ("tiny-llama-tied", false, 0.1),
    ] {
        let Some(dev) = cuda("tiny_gradients") else {
            return;
        };
        rows.push(gradient_row(&fixture(name), dev, nf4, dropout));
    }
    record(
        "tiny_gradients",
        Value::Array(rows.iter().map(|r| r.2.clone()).collect()),
    );
    for (loss, grads, row) in rows {
        assert!(loss <= GPU_SLACK && grads <= GPU_SLACK, "{row}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_gpu_repeats_its_bits_and_quantises_to_the_cpu_codes() {
    let Some(dev) = cuda("tiny_bits") else {
        return;
    };
    let model = fixture("tiny-llama");
    let (_, mut kern, tok) = engines(&model, dev, true, &all_modules(0.1));
    let b = batch(&tok);
    let ctx = ForwardCtx::train(3, 1, 1);
    let bits = |(loss, grads): (f64, Vec<Vec<f32>>)| {
        let g: Vec<u32> = grads.iter().flatten().map(|v| v.to_bits()).collect();
        (loss.to_bits(), g)
    };
    let first = bits(loss_and_grads(&mut kern, &b, LossMask::Prompt, &ctx));
    let second = bits(loss_and_grads(&mut kern, &b, LossMask::Prompt, &ctx));
    let mut ck = llama::open(&model).unwrap();
    let mut differ = Vec::new();
    for l in kern.linears() {
        let shape = [l.out_features, l.in_features];
        let values = ck.store.get(&format!("{}.weight", l.path), &shape).unwrap();
        let values = values.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = Nf4Tensor::quantize(&values, shape[0], shape[1], true).unwrap();
        let got = kern.device.nf4_of(&l.weight).unwrap();
        if got.as_ref() != Some(&want) {
            differ.push(l.path.clone());
        }
    }
    let same = first == second;
    record(
        "tiny_bits",
        json!({ "same_bits_twice": same, "nf4_layers_differing_from_cpu": differ }),
    );
    assert!(same, "two runs of one micro-batch gave different bits");
    assert!(
        differ.is_empty(),
        "NF4 codes differ from the CPU's: {differ:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn greedy_tokens_on_the_gpu_match_the_cpu_engine() {
    let mut rows = Vec::new();
    for nf4 in [false, true] {
        let Some(dev) = cuda("tiny_greedy") else {
            return;
        };
        let (cpu, kern, tok) = engines(&fixture("tiny-llama"), dev, nf4, &all_modules(0.0));
        let (equal, ratio, row) = greedy_row(&cpu, &kern, &tok);
        rows.push((equal, ratio, json!({ "nf4": nf4, "result": row })));
    }
    record(
        "tiny_greedy",
        Value::Array(rows.iter().map(|r| r.2.clone()).collect()),
    );
    for (equal, ratio, row) in rows {
        assert!(equal && ratio <= GPU_SLACK, "{row}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn smollm2_gradients_and_greedy_tokens_on_the_gpu_match_the_cpu_engine() {
    let Some(dev) = cuda("smollm2") else {
        return;
    };
    let model = match smollm2() {
        Ok(p) => p,
        Err(why) => {
            println!("skipped: {why}");
            record("smollm2", json!({ "skipped": why }));
            return;
        }
    };
    let (loss, grads, gradients) = gradient_row(&model, dev, false, 0.1);
    let Some(dev) = cuda("smollm2") else {
        return;
    };
    let (cpu, kern, tok) = engines(&model, dev, false, &all_modules(0.0));
    let (equal, ratio, greedy) = greedy_row(&cpu, &kern, &tok);
    record(
        "smollm2",
        json!({ "gradients": gradients, "greedy": greedy }),
    );
    assert!(loss <= GPU_SLACK && grads <= GPU_SLACK, "{gradients}");
    assert!(equal && ratio <= GPU_SLACK, "{greedy}");
}

/// A checkpoint folder with SmolLM2-135M's shapes (hidden 576, 30 layers, 9/3 heads, vocab 49152, tied head),
/// random weights and the tiny fixture's tokenizer: for timing only.
fn write_smollm2_shaped(dir: &Path) -> PathBuf {
    let tiny = fixture("tiny-llama");
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny.join(f), dir.join(f)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(tiny.join("config.json")).unwrap()).unwrap();
    for (key, value) in [
        ("hidden_size", json!(576)),
        ("intermediate_size", json!(1536)),
        ("num_hidden_layers", json!(30)),
        ("num_attention_heads", json!(9)),
        ("num_key_value_heads", json!(3)),
        ("head_dim", json!(64)),
        ("vocab_size", json!(49152)),
        ("max_position_embeddings", json!(8192)),
        ("rope_theta", json!(100000.0)),
        ("rope_scaling", Value::Null),
        ("tie_word_embeddings", json!(true)),
    ] {
        config[key] = value;
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let c = llama::config::LlamaConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let hid = c.hidden_size;
    let random = |seed: u64, shape: Vec<usize>| {
        let values = normal_f32(seed, shape.iter().product());
        (shape, values.into_iter().map(|v| v * 0.02).collect())
    };
    let ones = |n: usize| (vec![n], vec![1f32; n]);
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut push =
        |name: String, (shape, values): (Vec<usize>, Vec<f32>)| tensors.push((name, shape, values));
    push(
        "model.embed_tokens.weight".into(),
        random(1, vec![c.vocab_size, hid]),
    );
    push("model.norm.weight".into(), ones(hid));
    for i in 0..c.num_hidden_layers {
        let p = format!("model.layers.{i}");
        push(format!("{p}.input_layernorm.weight"), ones(hid));
        push(format!("{p}.post_attention_layernorm.weight"), ones(hid));
        for (j, (module, out, inp)) in c.projections().into_iter().enumerate() {
            let seed = 10 + (i * 7 + j) as u64;
            push(format!("{p}.{module}.weight"), random(seed, vec![out, inp]));
        }
    }
    tensor_io::write_f32(&dir.join("model.safetensors"), &tensors, None).unwrap();
    dir.to_path_buf()
}

/// Two examples of 128 prompt and 128 target tokens (ids spread over the vocabulary).
fn timing_batch(vocab: usize) -> Vec<TrainExample> {
    let ids = |start: usize| -> Vec<u32> {
        (0..128)
            .map(|i| ((start + i * 7919) % vocab) as u32)
            .collect()
    };
    (0..2)
        .map(|r| TrainExample {
            prompt: ids(r * 1000 + 3),
            target: ids(r * 1000 + 500),
        })
        .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU; prints figures"]
fn a_qlora_training_micro_batch_on_smollm2_shapes_prints_its_throughput() {
    let Some(dev) = cuda("throughput") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (model, weights) = match smollm2() {
        Ok(p) => (p, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised)"),
        Err(why) => {
            println!("{why}: timing a model of SmolLM2-135M's shapes with random weights instead");
            (
                write_smollm2_shaped(tmp.path()),
                "random weights, SmolLM2-135M's shapes",
            )
        }
    };
    let mut ck = llama::open(&model).unwrap();
    let vocab = ck.config.vocab_size;
    let mut kern = KernelLlama::load(Arc::new(dev), &mut ck, true).unwrap();
    let lora = LoraConfig {
        r: 16,
        alpha: 32.0,
        ..all_modules(0.05)
    };
    kern.add_lora(&lora, 7).unwrap();
    let examples = timing_batch(vocab);
    let tokens: usize = examples
        .iter()
        .map(|e| e.prompt.len() + e.target.len())
        .sum();
    let ctx = ForwardCtx::train(1, 0, 0);
    let step = || {
        let start = Instant::now();
        let out = kern
            .loss_and_grads(&examples, LossMask::Prompt, &ctx, 1)
            .unwrap()
            .expect("targets counted");
        (start.elapsed().as_secs_f64(), out.loss)
    };
    // The first step compiles (or loads) the kernels: reported apart.
    let (first, loss) = step();
    let mut secs: Vec<f64> = (0..3).map(|_| step().0).collect();
    secs.sort_by(f64::total_cmp);
    let median = secs[1];
    let device = kern.device.describe();
    println!(
        "{device}: QLoRA micro-batch 2 x 256 tokens ({weights}, r = 16, all projections): first {first:.3} s, \
         then {secs:.3?} s; median {median:.3} s = {:.0} tokens/s; loss {loss:.4}",
        tokens as f64 / median
    );
    record(
        "throughput",
        json!({
            "device": device, "weights": weights, "batch": 2, "tokens_per_row": 256, "rank": 16,
            "first_step_s": first, "steps_s": secs, "median_s": median,
            "tokens_per_s": tokens as f64 / median, "loss": loss,
        }),
    );
    assert!(loss.is_finite(), "the loss is {loss}");
}
