//! Speed of the CPU engine on SmolLM2-135M: LoRA training steps (batch 2 x 256 tokens, r=32 on q_proj,v_proj)
//! with the loss on every token (`train`) or, as the thesis trains, on the target only (`sft`: the last
//! `--target-tokens` of each row, the prompt masked), a QLoRA step with its peak memory, greedy generation (64 new
//! tokens, batch 1) and beam search (10 beams, as the thesis's stage 2, 64 new tokens). Prints figures; compare
//! with `scripts/bench/pytorch_peft.py` on the same machine and threads (`scripts/bench/compare_engine.py` runs
//! both interleaved).
//!
//! `cargo run --release -p tandem-worker --example bench_engine -- [--threads 2] [--model PATH] [--steps 5]
//!  [--mode all|train|sft|qlora|generate|beam] [--target-tokens 64] [--dtype f32|bf16]`

use std::path::PathBuf;
use std::time::Instant;

use tandem_experiments::manifest::{ComputeDtype, LossMask, Quantization};
use tandem_kernels::ops::optim::{AdamW, AdamWState};
use tandem_worker::engine::generate::{self, GenerateConfig};
use tandem_worker::engine::load::{LoadedModel, ModelOptions, TextModel, load_model};
use tandem_worker::engine::lora::LoraConfig;
use tandem_worker::engine::model::{self, TrainExample};
use tandem_worker::engine::packed;
use tandem_worker::engine::rng::{Purpose, Stream};

struct Args {
    threads: usize,
    model: PathBuf,
    steps: usize,
    mode: String,
    target_tokens: usize,
    /// `f32`, or `bf16`: the frozen weights packed for the bf16 GEMM, as the worker runs `compute_dtype = "bf16"`.
    dtype: ComputeDtype,
}

fn parse() -> Args {
    let mut a = Args {
        threads: 2,
        model: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )),
        steps: 5,
        mode: "all".into(),
        target_tokens: 40,
        dtype: ComputeDtype::F32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--threads" => a.threads = val().parse().expect("--threads N"),
            "--model" => a.model = PathBuf::from(val()),
            "--steps" => a.steps = val().parse().expect("--steps N"),
            "--mode" => a.mode = val(),
            "--target-tokens" => a.target_tokens = val().parse().expect("--target-tokens N"),
            "--dtype" => {
                a.dtype = match val().as_str() {
                    "f32" => ComputeDtype::F32,
                    "bf16" => ComputeDtype::Bf16,
                    other => panic!("--dtype {other}: accepted f32, bf16"),
                }
            }
            other => panic!(
                "unknown flag {other}; accepted: --threads, --model, --steps, --mode, --target-tokens, --dtype"
            ),
        }
    }
    a
}

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Two rows of 256 random tokens, the last `target` of each the target.
fn batch(vocab: usize, target: usize) -> Vec<TrainExample> {
    let mut s = Stream::new(7, Purpose::Shuffle, &[0]);
    let split = 256 - target.clamp(1, 255);
    (0..2)
        .map(|_| {
            let ids: Vec<u32> = (0..256).map(|_| s.below(vocab as u64) as u32).collect();
            TrainExample {
                prompt: ids[..split].to_vec(),
                target: ids[split..].to_vec(),
            }
        })
        .collect()
}

/// The model at `--model`, quantised as asked, its frozen weights packed in bf16 with `--dtype bf16`.
fn load(args: &Args, quantization: Quantization) -> LoadedModel {
    let options = ModelOptions {
        family: None,
        quantization,
        compute_dtype: args.dtype,
    };
    let mut loaded = load_model(&args.model, options).expect("load model");
    if args.dtype == ComputeDtype::Bf16 {
        packed::pack_model(loaded.model.as_mut()).expect("pack bf16");
    }
    loaded
}

/// What a training measurement learns from: every token, or the target only.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    Every,
    Target,
}

fn train_steps(args: &Args, quantization: Quantization, loss_on: Loss) {
    let t0 = Instant::now();
    let mut loaded = load(args, quantization);
    let load_s = t0.elapsed().as_secs_f64();
    let lora = LoraConfig {
        r: 32,
        alpha: 64.0,
        dropout: 0.05,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    };
    model::add_lora(loaded.model.as_mut(), &lora, 42).expect("add lora");
    let vars: Vec<candle_core::Var> = model::lora_layers(loaded.model.as_ref())
        .iter()
        .flat_map(|l| [l.lora().unwrap().a.clone(), l.lora().unwrap().b.clone()])
        .collect();
    let sizes: Vec<usize> = vars.iter().map(|v| v.as_tensor().elem_count()).collect();
    let mut opt = AdamWState::new(&sizes);
    let (data, mask) = match loss_on {
        Loss::Every => (batch(loaded.model.vocab_size(), 255), LossMask::Pad),
        Loss::Target => (
            batch(loaded.model.vocab_size(), args.target_tokens),
            LossMask::Prompt,
        ),
    };
    let steps = if quantization == Quantization::Nf4 {
        2
    } else {
        args.steps + 1
    };
    let mut times = Vec::new();
    for step in 0..steps {
        let t = Instant::now();
        let ctx = tandem_worker::engine::lora::ForwardCtx::train(42, step as u64, 0);
        let out = loaded.model.loss(&data, mask, &ctx).expect("loss");
        let loss = (out.loss_sum / out.tokens as f64).expect("mean");
        let grads = loss.backward().expect("backward");
        let mut params: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| {
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        let g: Vec<Vec<f32>> = vars
            .iter()
            .map(|v| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        opt.update(&AdamW::torch(1e-4, 0.01), &mut params, &g)
            .expect("adamw");
        for (v, p) in vars.iter().zip(&params) {
            v.set(
                &candle_core::Tensor::from_slice(
                    p,
                    v.as_tensor().shape(),
                    &candle_core::Device::Cpu,
                )
                .unwrap(),
            )
            .unwrap();
        }
        times.push(t.elapsed().as_secs_f64());
    }
    let measured = &times[1..];
    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
    let label = match (quantization, loss_on) {
        (Quantization::Nf4, _) => "qlora".to_string(),
        (_, Loss::Every) => "lora ".to_string(),
        (_, Loss::Target) => format!("sft (loss on {} of 256 tokens)", args.target_tokens),
    };
    println!(
        "{label} train  load {load_s:.1}s  step {mean:.3}s (mean of {})  {:.0} tokens/s  peak RSS {:.0} MiB",
        measured.len(),
        512.0 / mean,
        peak_rss_mib()
    );
}

/// 64 new tokens for one prompt, greedy (`beams` = 1) or by beam search; no end of sequence, so both sides decode
/// the same number of tokens.
fn generation(args: &Args, beams: usize) {
    let loaded = load(args, Quantization::None);
    let prompt = loaded.encode("Below is a patient's chest X-ray findings: the heart is normal in size. The lungs are clear.").unwrap();
    let cfg = GenerateConfig {
        eos_token_ids: Some(vec![]),
        num_beams: beams,
        ..GenerateConfig::greedy(64)
    };
    // Warm-up.
    generate::generate(
        loaded.model.as_ref(),
        std::slice::from_ref(&prompt),
        &GenerateConfig {
            max_new_tokens: 4,
            ..cfg.clone()
        },
    )
    .unwrap();
    let t = Instant::now();
    let out =
        generate::generate(loaded.model.as_ref(), std::slice::from_ref(&prompt), &cfg).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let what = match beams {
        1 => "greedy".to_string(),
        n => format!("beam ({n} beams)"),
    };
    println!(
        "{what} generate  prompt {} tokens, {} new tokens in {secs:.2}s  {:.1} new tokens/s",
        prompt.len(),
        out[0].len(),
        out[0].len() as f64 / secs
    );
}

fn dtype_name(dtype: ComputeDtype) -> &'static str {
    match dtype {
        ComputeDtype::Bf16 => "bf16",
        _ => "f32",
    }
}

fn main() {
    let args = parse();
    // As the worker runs jobs (worker/src/main.rs): buffers reused across steps instead of re-faulted.
    tandem_worker::engine::alloc::tune_for_tensors();
    tandem_worker::engine::threads::run_with_threads(Some(args.threads), || run(&args));
}

fn run(args: &Args) {
    if !args.model.exists() {
        eprintln!(
            "{} not found: run scripts/fetch-models.sh",
            args.model.display()
        );
        std::process::exit(2);
    }
    match args.mode.as_str() {
        "train" => train_steps(args, Quantization::None, Loss::Every),
        "sft" => train_steps(args, Quantization::None, Loss::Target),
        "qlora" => train_steps(args, Quantization::Nf4, Loss::Every),
        "generate" => generation(args, 1),
        "beam" => generation(args, 10),
        "all" => {
            println!(
                "tandem CPU engine, {} threads, compute {}, {}",
                args.threads,
                dtype_name(args.dtype),
                args.model.display()
            );
            // Each measurement in its own process, so peak memory is that mode's alone.
            for mode in ["train", "sft", "qlora", "generate", "beam"] {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--mode",
                        mode,
                        "--threads",
                        &args.threads.to_string(),
                        "--steps",
                        &args.steps.to_string(),
                        "--target-tokens",
                        &args.target_tokens.to_string(),
                        "--dtype",
                        dtype_name(args.dtype),
                    ])
                    .arg("--model")
                    .arg(&args.model)
                    .status()
                    .expect("run bench child");
                assert!(status.success(), "{mode} failed");
            }
        }
        other => panic!("--mode {other}: accepted: all, train, sft, qlora, generate, beam"),
    }
}
