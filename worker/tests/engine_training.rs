//! Training, adapters and bad input on the tiny LLaMA fixture: determinism, resume equals an uninterrupted
//! run, QLoRA lowers the loss, PEFT round trip, and clear errors for broken inputs.

mod common;

use std::path::{Path, PathBuf};

use common::examples;

use tandem_experiments::manifest::{LossMask, TrainingSpec};
use tandem_worker::engine::generate::{self, GenerateConfig};
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::lora::{ForwardCtx, LoraConfig};
use tandem_worker::engine::model::{self, LanguageModel};
use tandem_worker::engine::train::{self, TrainConfig, TrainEvent};
use tandem_worker::engine::{bf16, packed, peft, qlora};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

fn load() -> (Llama, tokenizers::Tokenizer) {
    llama::load(&tiny()).unwrap()
}

const ROWS: &[(&str, &str)] = &[
    (
        "The heart is normal in size. The lungs are clear.",
        "No acute disease.",
    ),
    (
        "Mild cardiomegaly. Small left pleural effusion.",
        "Cardiomegaly with effusion.",
    ),
    (
        "No focal consolidation. No pneumothorax.",
        "No acute cardiopulmonary process.",
    ),
    (
        "Degenerative changes of the spine. Lungs clear.",
        "No acute abnormality.",
    ),
    (
        "Right lower lobe opacity, likely pneumonia.",
        "Right lower lobe pneumonia.",
    ),
    (
        "Stable postoperative changes. No effusion.",
        "Stable chest.",
    ),
];

fn spec() -> TrainingSpec {
    TrainingSpec {
        batch_size: 2,
        grad_accum: 2,
        lr: 5e-3,
        warmup_steps: 1,
        weight_decay: 0.01,
        epochs: 3.0,
        max_grad_norm: 1.0,
        eval_every: 2,
        log_every: 1,
        checkpoint_every: 2,
        checkpoints_kept: 10,
        early_stopping_patience: 0,
        max_length: 128,
        loss_mask: LossMask::Prompt,
        max_steps: None,
    }
}

fn lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: vec!["q_proj".into(), "v_proj".into()],
    }
}

/// How the base weights are held in a run: dense, NF4 decoded on use, or NF4 held dequantised.
#[derive(Clone, Copy, PartialEq)]
enum Weights {
    Dense,
    Nf4,
    Nf4Held,
    /// Dense weights packed for the bf16 GEMM (`compute_dtype = "bf16"`).
    Bf16,
}

/// Trains the tiny LLaMA on `ROWS` (4 train, the rest validation), asking `should_stop` after every update;
/// returns the loop's result and every event it reported.
fn train_tiny(
    dir: &Path,
    resume: bool,
    weights: Weights,
    spec: TrainingSpec,
    should_stop: &dyn Fn() -> bool,
) -> (
    Result<train::TrainSummary, tandem_worker::engine::EngineError>,
    Vec<TrainEvent>,
) {
    let (mut model, tok) = load();
    if matches!(weights, Weights::Nf4 | Weights::Nf4Held) {
        assert_eq!(qlora::quantize_model(&mut model).unwrap(), 14);
    }
    if weights == Weights::Bf16 {
        assert!(packed::pack_model(&mut model).unwrap() > 0);
    }
    if weights == Weights::Nf4Held {
        let bytes = qlora::hold_dequantized(&mut model).unwrap();
        assert_eq!(bytes, qlora::dequantized_bytes(&model));
        assert!(bytes > 0);
    }
    let data = examples(&tok, ROWS);
    let (tr, val) = data.split_at(4);
    let config = TrainConfig {
        training: spec,
        lora: lora(),
        seed: 42,
        resume,
    };
    let mut events = Vec::new();
    let result = train::train_until(
        &mut model,
        tr,
        val,
        &config,
        dir,
        &mut |e| events.push(e),
        should_stop,
    );
    (result, events)
}

fn run(
    dir: &Path,
    resume: bool,
    quantize: bool,
    spec: TrainingSpec,
) -> (train::TrainSummary, Vec<TrainEvent>) {
    let weights = if quantize {
        Weights::Nf4
    } else {
        Weights::Dense
    };
    let (result, events) = train_tiny(dir, resume, weights, spec, &|| false);
    (result.unwrap(), events)
}

/// Trains QLoRA with `should_stop` asked after every update; `hold` keeps the NF4 weights dequantised.
fn run_until(
    dir: &Path,
    resume: bool,
    hold: bool,
    spec: TrainingSpec,
    should_stop: &dyn Fn() -> bool,
) -> Result<train::TrainSummary, tandem_worker::engine::EngineError> {
    let weights = if hold { Weights::Nf4Held } else { Weights::Nf4 };
    train_tiny(dir, resume, weights, spec, should_stop).0
}

#[test]
fn nf4_held_dequantized_trains_bit_for_bit_like_decoding_on_use() {
    let mut s = spec();
    s.grad_accum = 1;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let on_use = run_until(a.path(), false, false, s.clone(), &|| false).unwrap();
    let held = run_until(b.path(), false, true, s, &|| false).unwrap();
    assert_eq!(on_use.losses, held.losses);
    assert_eq!(adapter_bytes(a.path()), adapter_bytes(b.path()));
}

#[test]
fn a_stop_request_checkpoints_and_the_resumed_run_matches_an_uninterrupted_one() {
    let mut s = spec();
    s.epochs = 5.0;
    s.grad_accum = 1;
    s.checkpoint_every = 4;
    let full_dir = tempfile::tempdir().unwrap();
    let full = run_until(full_dir.path(), false, true, s.clone(), &|| false).unwrap();
    assert!(full.steps >= 8, "{} steps", full.steps);

    // Stop after the third update (not a checkpoint step): the loop writes checkpoint-3 on its way out.
    let dir = tempfile::tempdir().unwrap();
    let asked = std::cell::Cell::new(0);
    let stop_after_3 = || {
        asked.set(asked.get() + 1);
        asked.get() >= 3
    };
    match run_until(dir.path(), false, true, s.clone(), &stop_after_3) {
        Err(tandem_worker::engine::EngineError::Stopped { step, checkpoint }) => {
            assert_eq!(step, 3);
            let checkpoint = checkpoint.expect("a checkpoint is written on stop");
            assert!(checkpoint.ends_with("checkpoint-3"), "{checkpoint:?}");
            assert!(checkpoint.join("state.json").is_file());
        }
        other => panic!("expected a stop after step 3, got {other:?}"),
    }
    let resumed = run_until(dir.path(), true, true, s, &|| false).unwrap();
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(adapter_bytes(dir.path()), adapter_bytes(full_dir.path()));
}

fn adapter_bytes(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter").join(peft::WEIGHTS_FILE)).unwrap()
}

#[test]
fn bf16_training_is_bitwise_deterministic_learns_and_follows_f32() {
    if !bf16::simd_available() {
        eprintln!("skipped: this CPU lacks AVX-512 BF16");
        return;
    }
    let mut s = spec();
    s.grad_accum = 1;
    s.epochs = 6.0;
    s.lr = 2e-2;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let train = |dir: &Path, weights| {
        train_tiny(dir, false, weights, s.clone(), &|| false)
            .0
            .unwrap()
    };
    let a = train(dirs[0].path(), Weights::Bf16);
    let b = train(dirs[1].path(), Weights::Bf16);
    let f32_run = train(dirs[2].path(), Weights::Dense);
    assert_eq!(a.losses, b.losses);
    assert_eq!(adapter_bytes(dirs[0].path()), adapter_bytes(dirs[1].path()));
    // Rounding the frozen products' inputs to bf16 (8 significant bits) moved the losses of this run by at most
    // 4e-4 of their value (3.5e-5 for the first, which only the forward pass makes; 2026-12-07). The bound, 5x
    // that, still catches a lost or misoriented input gradient, which changes every loss after the first by
    // far more.
    let worst = a
        .losses
        .iter()
        .zip(&f32_run.losses)
        .map(|(x, y)| (x - y).abs() / y)
        .fold(0.0, f64::max);
    assert!(
        worst < 2e-3,
        "bf16 {:?} against f32 {:?}",
        a.losses,
        f32_run.losses
    );
    let first = a.losses[..2].iter().sum::<f64>() / 2.0;
    let last = a.losses[a.losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < first * 0.8, "bf16 loss did not fall: {:?}", a.losses);
}

#[test]
fn training_is_bitwise_deterministic_and_learns() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, events) = run(a.path(), false, false, spec());
    let (sb, _) = run(b.path(), false, false, spec());
    // 4 examples, batch 2, accumulation 2: one update per epoch, 3 epochs.
    assert_eq!(sa.steps, 3);
    assert_eq!(sa.losses, sb.losses);
    assert_eq!(adapter_bytes(a.path()), adapter_bytes(b.path()));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TrainEvent::Eval(m) if m.perplexity > 1.0))
    );
    assert!(sa.best_val_loss.is_some());

    // Longer run: the loss goes down.
    let mut long = spec();
    long.lr = 2e-2;
    long.epochs = 12.0;
    long.grad_accum = 1;
    let c = tempfile::tempdir().unwrap();
    let (sc, _) = run(c.path(), false, false, long);
    let first = sc.losses[..2].iter().sum::<f64>() / 2.0;
    let last = sc.losses[sc.losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < first * 0.8, "loss did not fall: {:?}", sc.losses);
}

#[test]
fn resume_from_checkpoint_equals_an_uninterrupted_run() {
    let mut s = spec();
    s.epochs = 6.0;
    s.grad_accum = 1;
    s.early_stopping_patience = 2;
    let full = tempfile::tempdir().unwrap();
    let (sf, _) = run(full.path(), false, false, s.clone());
    assert!(sf.steps >= 6);
    // An interrupted run: all that survives is the checkpoint it wrote at step 4 (taken from the full run,
    // which wrote exactly what the interrupted run would have).
    let ckpts = full.path().join("checkpoints");
    let resumed = tempfile::tempdir().unwrap();
    let target = resumed.path().join("checkpoints/checkpoint-4");
    std::fs::create_dir_all(target.join("adapter")).unwrap();
    let src = ckpts.join("checkpoint-4");
    for f in ["optimizer.safetensors", "state.json"] {
        std::fs::copy(src.join(f), target.join(f)).unwrap();
    }
    if src.join("best.safetensors").exists() {
        std::fs::copy(
            src.join("best.safetensors"),
            target.join("best.safetensors"),
        )
        .unwrap();
    }
    for f in [peft::CONFIG_FILE, peft::WEIGHTS_FILE] {
        std::fs::copy(src.join("adapter").join(f), target.join("adapter").join(f)).unwrap();
    }
    let (sr, events) = run(resumed.path(), true, false, s);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, TrainEvent::Started { resumed_at: 4, .. }))
    );
    assert_eq!(sr.losses, sf.losses);
    assert_eq!(sr.best_step, sf.best_step);
    assert_eq!(adapter_bytes(resumed.path()), adapter_bytes(full.path()));
}

#[test]
fn qlora_training_lowers_the_loss() {
    let mut s = spec();
    s.lr = 2e-2;
    s.epochs = 10.0;
    s.grad_accum = 1;
    s.eval_every = 0;
    s.checkpoint_every = 0;
    let dir = tempfile::tempdir().unwrap();
    let (summary, _) = run(dir.path(), false, true, s);
    let first = summary.losses[..2].iter().sum::<f64>() / 2.0;
    let last = summary.losses[summary.losses.len() - 2..]
        .iter()
        .sum::<f64>()
        / 2.0;
    assert!(
        last < first * 0.8,
        "QLoRA loss did not fall: {:?}",
        summary.losses
    );
}

#[test]
fn qlora_holds_nf4_weights_with_the_expected_error() {
    let (dense, _) = load();
    let (mut q, _) = load();
    qlora::quantize_model(&mut q).unwrap();
    // 4 bits + double-quantised scales instead of 32 bits per weight.
    let (dense_lin, q_lin): (usize, usize) = (
        dense.linears().iter().map(|l| l.base_bytes()).sum(),
        q.linears().iter().map(|l| l.base_bytes()).sum(),
    );
    assert!(q_lin * 6 < dense_lin, "{q_lin} vs {dense_lin} bytes");
    for (d, l) in dense.linears().iter().zip(q.linears()) {
        let w = d
            .base_matrix()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let v = l
            .base_matrix()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let rms = |x: &mut dyn Iterator<Item = f32>| {
            let (s, n) = x.fold((0f64, 0usize), |(s, n), v| {
                (s + f64::from(v) * f64::from(v), n + 1)
            });
            (s / n as f64).sqrt()
        };
        let err = rms(&mut w.iter().zip(&v).map(|(a, b)| a - b)) / rms(&mut w.iter().copied());
        // NF4 on roughly normal weights: relative RMS error about 0.1.
        assert!(
            err > 0.01 && err < 0.15,
            "{}: relative RMS error {err}",
            l.path
        );
    }
    let ids = [0u32, 280, 338, 396, 397, 80];
    let logits = q
        .sequence_logits(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(logits.iter().all(|x| x.is_finite()));
}

#[test]
fn sampling_and_beam_sampling_are_seeded() {
    let (model, tok) = load();
    let prompt = tok
        .encode("The lungs are clear.", true)
        .unwrap()
        .get_ids()
        .to_vec();
    let mut cfg = GenerateConfig::greedy(8);
    cfg.do_sample = true;
    cfg.temperature = 0.7;
    cfg.top_k = 50;
    cfg.seed = 3;
    let a = generate::generate(&model, &[prompt.clone(), prompt.clone()], &cfg).unwrap();
    let b = generate::generate(&model, &[prompt.clone(), prompt.clone()], &cfg).unwrap();
    assert_eq!(a, b);
    cfg.num_beams = 3;
    cfg.top_p = 0.9;
    cfg.repetition_penalty = 1.1;
    cfg.length_penalty = 0.3;
    let c = generate::generate(&model, std::slice::from_ref(&prompt), &cfg).unwrap();
    let d = generate::generate(&model, std::slice::from_ref(&prompt), &cfg).unwrap();
    assert_eq!(c, d);
    assert!(!c[0].is_empty());
}

#[test]
fn min_new_tokens_suppresses_end_of_sequence_until_reached() {
    let (model, tok) = load();
    let prompt = tok
        .encode("The lungs are clear.", true)
        .unwrap()
        .get_ids()
        .to_vec();
    let free = generate::generate(
        &model,
        std::slice::from_ref(&prompt),
        &GenerateConfig::greedy(6),
    )
    .unwrap();
    let first = free[0][0];
    // Make the greedy first token the end of sequence: without a minimum, nothing is generated.
    let mut cfg = GenerateConfig::greedy(6);
    cfg.eos_token_ids = Some(vec![first]);
    let stopped = generate::generate(&model, std::slice::from_ref(&prompt), &cfg).unwrap();
    assert!(stopped[0].is_empty(), "{stopped:?}");
    for beams in [1, 3] {
        cfg.num_beams = beams;
        cfg.min_new_tokens = 3;
        let out = generate::generate(&model, std::slice::from_ref(&prompt), &cfg).unwrap();
        assert!(out[0].len() >= 3, "beams {beams}: {out:?}");
        assert!(!out[0][..3].contains(&first), "beams {beams}: {out:?}");
    }
}

#[test]
fn peft_round_trip_gives_identical_logits() {
    let (mut model, _) = load();
    model::add_lora(&mut model, &lora(), 5).unwrap();
    // Make B non-zero so the adapter matters.
    for l in model::lora_layers(&model) {
        let b = l.lora().unwrap().b.as_tensor();
        l.lora()
            .unwrap()
            .b
            .set(&(b.ones_like().unwrap() * 0.05).unwrap())
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    peft::save(&model, &lora(), dir.path()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(peft::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["base_model_name_or_path"], "tiny-llama");
    let names =
        tandem_worker::engine::tensor_io::read_all_f32(&dir.path().join(peft::WEIGHTS_FILE))
            .unwrap();
    assert!(names.contains_key("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"));
    assert_eq!(names.len(), 8);

    let (mut fresh, _) = load();
    peft::load(&mut fresh, dir.path(), Some(4)).unwrap();
    let ids = [0u32, 5, 9, 17];
    let a = model
        .sequence_logits(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = fresh
        .sequence_logits(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    let (base, _) = load();
    let c = base
        .sequence_logits(&ids)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_ne!(a, c);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn load_err(dir: &Path) -> String {
    match llama::load(dir) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_files_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Missing weights.
    let d = tmp.path().join("tiny-llama");
    copy_dir(&tiny(), &d);
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    let e = load_err(&d);
    assert!(e.contains("no model.safetensors"), "{e}");
    // Truncated weights.
    let full = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &full[..full.len() / 2]).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
        "{e}"
    );
    std::fs::write(d.join("model.safetensors"), &full).unwrap();
    // Unsupported config value.
    let cfg_path = d.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let good = cfg.clone();
    cfg["rope_scaling"]["rope_type"] = "yarn".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("config.json") && e.contains("rope_scaling.rope_type") && e.contains("yarn"),
        "{e}"
    );
    // Tokenizer that does not fit the vocabulary.
    let mut small = good.clone();
    small["vocab_size"] = 300.into();
    std::fs::write(&cfg_path, small.to_string()).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("tokenizer.json") && e.contains("400 tokens") && e.contains("vocab_size is 300"),
        "{e}"
    );
    // Weights of another shape than the config.
    let mut wide = good.clone();
    wide["vocab_size"] = 500.into();
    std::fs::write(&cfg_path, wide.to_string()).unwrap();
    let e = load_err(&d);
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("[500, 64]"),
        "{e}"
    );
}

#[test]
fn truncated_gguf_is_reported() {
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../.cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !gguf.exists() {
        eprintln!(
            "skipped: {} is not in the cache (run scripts/fetch-models.sh)",
            gguf.display()
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.gguf");
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = match llama::load(&cut) {
        Ok(_) => panic!("a truncated GGUF loaded"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("cut.gguf") && e.contains("truncated"), "{e}");
}

#[test]
fn adapters_of_another_rank_are_refused_and_a_renamed_base_loads_as_in_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("adapter");
    copy_dir(&tiny().join("adapter"), &a);
    let (mut model, _) = load();
    let e = peft::load(&mut model, &a, Some(8)).unwrap_err().to_string();
    assert!(
        e.contains("adapter_config.json") && e.contains("r is 4") && e.contains("lora.r is 8"),
        "{e}"
    );
    let cfg_path = a.join(peft::CONFIG_FILE);
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["base_model_name_or_path"] = "meta-llama/Llama-3.1-8B-Instruct".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // PEFT loads an adapter whose recorded base has another name when every tensor fits; so does Tandem (with a
    // warning). The shapes are what is checked.
    let loaded = peft::load(&mut model, &a, None).unwrap();
    assert_eq!(loaded.r, 4);
}

#[test]
fn an_adapter_records_the_model_id_its_base_config_names() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("checkpoint-from-hub");
    copy_dir(&tiny(), &base);
    let config_path = base.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["_name_or_path"] = "lab-org/tiny-llama-radiology".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    let (mut model, _) = llama::load(&base).unwrap();
    model::add_lora(&mut model, &lora(), 5).unwrap();
    let out = tmp.path().join("adapter");
    peft::save(&model, &lora(), &out).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(peft::CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(
        cfg["base_model_name_or_path"],
        "lab-org/tiny-llama-radiology"
    );
    // A path in _name_or_path is no id: the folder name is recorded instead.
    config["_name_or_path"] = "/home/ana/models/tiny".into();
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert_eq!(
        tandem_worker::engine::llama::model::base_name(&base),
        "checkpoint-from-hub"
    );
}

#[test]
fn overlong_sequences_are_errors_not_truncations() {
    let (model, tok) = load();
    let long: Vec<u32> = (0..300).map(|i| (i % 300) as u32 + 3).collect();
    let e = model.sequence_logits(&long).unwrap_err().to_string();
    assert!(
        e.contains("300 tokens") && e.contains("max_position_embeddings = 256"),
        "{e}"
    );
    let data = examples(&tok, ROWS);
    let mut s = spec();
    s.max_length = 8;
    let config = TrainConfig {
        training: s,
        lora: lora(),
        seed: 1,
        resume: false,
    };
    let (mut m, _) = load();
    let dir = tempfile::tempdir().unwrap();
    let e = train::train(&mut m, &data, &[], &config, dir.path(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("training example 0") && e.contains("max_length 8"),
        "{e}"
    );
    let _ = ForwardCtx::eval();
    let _: &dyn LanguageModel = &model;
}

#[test]
fn compute_dtype_bf16_packs_every_frozen_weight_or_says_what_the_cpu_lacks() {
    use tandem_experiments::manifest::{ComputeDtype, Quantization};
    use tandem_worker::engine::backend::{Backend, EngineModel};
    use tandem_worker::engine::load::ModelOptions;
    use tandem_worker::engine::lora::FrozenWeight;

    let options = ModelOptions {
        family: None,
        quantization: Quantization::None,
        compute_dtype: ComputeDtype::Bf16,
    };
    match EngineModel::load(&tiny(), options, &Backend::Cpu) {
        Ok(EngineModel::Cpu(loaded)) => {
            assert!(bf16::simd_available());
            let linears = loaded.model.linears();
            assert_eq!(linears.len(), 14);
            for l in linears {
                assert!(matches!(l.base(), FrozenWeight::Quantized(_)), "{}", l.path);
                assert_eq!(
                    l.base_bytes(),
                    l.in_features * l.out_features * 4,
                    "{}",
                    l.path
                );
            }
        }
        Ok(EngineModel::Kernel(_)) => panic!("a CPU backend loaded the kernel engine"),
        Err(e) => {
            assert!(!bf16::simd_available(), "{e}");
            assert!(e.to_string().contains("AVX-512 BF16"), "{e}");
        }
    }
}
