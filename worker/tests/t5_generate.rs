//! T5 incremental decoding (encoder once, decoder KV cache and cached cross-attention keys/values
//! through the engine's `LanguageModel::start`/`step`) against transformers' `generate` on the tiny
//! checkpoints (`tests/fixtures/tiny-t5/*/generate.json`), through the engine's generation code.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_worker::engine::generate::{GenerateConfig, generate};
use tandem_worker::engine::lora::ForwardCtx;
use tandem_worker::engine::model::Decoder;
use tandem_worker::engine::peft;
use tandem_worker::engine::t5::T5Model;

const VARIANTS: [&str; 2] = ["relu", "gated-gelu"];

fn fixture_dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-t5")
        .join(variant)
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<u32>> {
    v.as_array().unwrap().iter().map(ids).collect()
}

/// The new tokens transformers generated: after the decoder start token, up to the first EOS
/// (excluded; finished rows are then padded).
fn new_tokens(sequence: &[u32], eos: u32) -> Vec<u32> {
    sequence[1..]
        .iter()
        .take_while(|&&t| t != eos)
        .copied()
        .collect()
}

fn config_of(params: &Value) -> GenerateConfig {
    let mut cfg = GenerateConfig::greedy(params["max_new_tokens"].as_u64().unwrap() as usize);
    cfg.num_beams = params["num_beams"].as_u64().unwrap() as usize;
    cfg.length_penalty = params
        .get("length_penalty")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    cfg.early_stopping = params
        .get("early_stopping")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    cfg.repetition_penalty = params
        .get("repetition_penalty")
        .and_then(Value::as_f64)
        .unwrap_or(1.0);
    cfg
}

/// Runs every case of `generate.json` (greedy, beam search, repetition penalty, a stand-in EOS, a
/// padded batch) through the engine's `generate` and compares the new tokens.
fn check_cases(model: &mut T5Model, cases: &[&Value], what: &str) {
    assert!(!cases.is_empty());
    for case in cases {
        let params = &case["params"];
        let eos = params["eos_token_id"].as_u64().unwrap() as u32;
        model.set_eos_tokens(vec![eos]);
        let mut prompts = rows(&case["input_ids"]);
        // Batched prompts arrive right-padded; the engine takes unpadded prompts and pads them
        // itself.
        for (p, m) in prompts.iter_mut().zip(rows(&case["attention_mask"])) {
            p.truncate(m.iter().filter(|&&x| x == 1).count());
        }
        let got = generate(&*model, &prompts, &config_of(params)).unwrap();
        let want: Vec<Vec<u32>> = rows(&case["sequences"])
            .iter()
            .map(|s| new_tokens(s, eos))
            .collect();
        assert_eq!(got, want, "{what}: case {}", case["name"]);
    }
    model.set_eos_tokens(vec![model.config.eos_token_id]);
}

fn cases_of(fixture: &Value, adapter: bool) -> Vec<&Value> {
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().ends_with("with_adapter") == adapter)
        .collect()
}

#[test]
fn generation_matches_transformers_generate() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let fixture = read_json(&dir.join("generate.json"));
        let mut model = T5Model::load(&dir).unwrap();
        check_cases(&mut model, &cases_of(&fixture, false), variant);
        peft::load(&mut model, &dir.join("adapter"), None).unwrap();
        check_cases(
            &mut model,
            &cases_of(&fixture, true),
            &format!("{variant} + adapter"),
        );
    }
}

/// Step-by-step logits with the cache (and after reordering rows, as beam search does) equal a full
/// pass.
#[test]
fn cached_steps_equal_a_full_pass_and_follow_row_selection() {
    let model = T5Model::load(&fixture_dir("gated-gelu")).unwrap();
    let prompts = vec![vec![5u32, 6, 7, 8, 1], vec![9u32, 10, 1]];
    let fed = [[11u32, 12, 13], [14, 15, 16]];
    let (mut state, first) = model.start(&prompts).unwrap();
    let mut stepped = vec![first.to_vec2::<f32>().unwrap()];
    for (&a, &b) in fed[0].iter().zip(&fed[1]) {
        let logits = model.step(state.as_mut(), &[a, b]).unwrap();
        stepped.push(logits.to_vec2::<f32>().unwrap());
    }
    let ctx = ForwardCtx::eval();
    for (row, prompt) in prompts.iter().enumerate() {
        let decoder = vec![[0u32].iter().chain(&fed[row]).copied().collect::<Vec<_>>()];
        let full = model
            .forward(std::slice::from_ref(prompt), None, &decoder, &ctx)
            .unwrap();
        let full = full.to_vec3::<f32>().unwrap();
        for (pos, step) in stepped.iter().enumerate() {
            let diff = full[0][pos]
                .iter()
                .zip(&step[row])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "row {row} position {pos}: {diff}");
        }
    }

    // Swap the rows: the next step of row 0 must continue prompt 1's sequence.
    state.select(&[1, 1, 0]).unwrap();
    assert_eq!(state.rows(), 3);
    let after = model
        .step(state.as_mut(), &[17, 17, 18])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let decoder = vec![vec![0u32, 14, 15, 16, 17]];
    let full = model
        .forward(&prompts[1..], None, &decoder, &ctx)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    for row in [0, 1] {
        let diff = full[0][4]
            .iter()
            .zip(&after[row])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "reordered row {row}: {diff}");
    }
    assert!(
        model.step(state.as_mut(), &[1, 2]).is_err(),
        "wrong number of tokens must be an error"
    );
    assert!(
        state.select(&[3]).is_err(),
        "selecting a missing row must be an error"
    );
}
