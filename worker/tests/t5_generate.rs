//! T5 incremental decoding (encoder once, decoder KV cache and cached cross-attention keys/values through the
//! engine's `LanguageModel::start`/`step`) against transformers' `generate` on the tiny checkpoints
//! (`tests/fixtures/tiny-t5/*/generate.json`). The decode loop here is greedy with the repetition penalty as
//! transformers applies it; beam-search cases are checked by the engine's generation tests.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_worker::engine::lora::ForwardCtx;
use tandem_worker::engine::model::{DecodeState, LanguageModel};
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

/// Greedy decoding as transformers does it: the repetition penalty divides positive (multiplies negative)
/// logits of every token already in the decoder sequence, the start token included, once per distinct token;
/// finished rows get pad.
fn greedy(
    model: &T5Model,
    prompts: &[Vec<u32>],
    max_new: usize,
    eos: u32,
    pad: u32,
    repetition_penalty: f32,
) -> Vec<Vec<u32>> {
    let start = model.config.decoder_start_token_id;
    let mut sequences: Vec<Vec<u32>> = vec![vec![start]; prompts.len()];
    let mut finished = vec![false; prompts.len()];
    let (mut state, mut logits): (Box<dyn DecodeState>, _) = model.start(prompts).unwrap();
    for step in 0..max_new {
        let rows = logits.to_vec2::<f32>().unwrap();
        let mut next = Vec::with_capacity(rows.len());
        for (r, mut row) in rows.into_iter().enumerate() {
            if finished[r] {
                next.push(pad);
                continue;
            }
            if repetition_penalty != 1.0 {
                // Once per distinct token, however often it occurs (transformers gathers and scatters).
                let mut seen: Vec<u32> = sequences[r].clone();
                seen.sort_unstable();
                seen.dedup();
                for &t in &seen {
                    let x = &mut row[t as usize];
                    *x = if *x < 0.0 {
                        *x * repetition_penalty
                    } else {
                        *x / repetition_penalty
                    };
                }
            }
            // First maximum, as torch.argmax.
            let best = row
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0 as u32;
            next.push(best);
        }
        for (r, &t) in next.iter().enumerate() {
            sequences[r].push(t);
            if t == eos {
                finished[r] = true;
            }
        }
        if finished.iter().all(|&f| f) || step + 1 == max_new {
            break;
        }
        logits = model.step(state.as_mut(), &next).unwrap();
    }
    sequences
}

fn check_greedy_cases(model: &T5Model, cases: &[&Value], what: &str) {
    assert!(!cases.is_empty());
    for case in cases {
        let params = &case["params"];
        let mut prompts = rows(&case["input_ids"]);
        // Batched prompts arrive right-padded; the engine takes unpadded prompts and pads them itself.
        for (p, m) in prompts.iter_mut().zip(rows(&case["attention_mask"])) {
            p.truncate(m.iter().filter(|&&x| x == 1).count());
        }
        let got = greedy(
            model,
            &prompts,
            params["max_new_tokens"].as_u64().unwrap() as usize,
            params["eos_token_id"].as_u64().unwrap() as u32,
            params["pad_token_id"].as_u64().unwrap() as u32,
            params
                .get("repetition_penalty")
                .and_then(Value::as_f64)
                .unwrap_or(1.0) as f32,
        );
        let want = rows(&case["sequences"]);
        assert_eq!(got, want, "{what}: case {}", case["name"]);
    }
}

fn greedy_cases(fixture: &Value, adapter: bool) -> Vec<&Value> {
    fixture["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["params"]["num_beams"].as_u64() == Some(1))
        .filter(|c| c["name"].as_str().unwrap().ends_with("with_adapter") == adapter)
        .collect()
}

#[test]
fn greedy_decoding_matches_transformers_generate() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let fixture = read_json(&dir.join("generate.json"));
        let mut model = T5Model::load(&dir).unwrap();
        check_greedy_cases(&model, &greedy_cases(&fixture, false), variant);
        peft::load(&mut model, &dir.join("adapter"), None).unwrap();
        check_greedy_cases(
            &model,
            &greedy_cases(&fixture, true),
            &format!("{variant} + adapter"),
        );
    }
}

/// Step-by-step logits with the cache (and after reordering rows, as beam search does) equal a full pass.
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
