//! T5 parity with Hugging Face transformers/PEFT on the tiny random checkpoints in
//! `tests/fixtures/tiny-t5/` (made by `scripts/parity/make_fixtures.py`): logits, adapter logits,
//! the decoder loss, greedy decoding.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_worker::engine::lora::ForwardCtx;
use tandem_worker::engine::model::{LanguageModel, TrainExample};
use tandem_worker::engine::peft;
use tandem_worker::engine::t5::{IGNORE, T5Model};

const VARIANTS: [&str; 2] = ["relu", "gated-gelu"];
const TOLERANCE: f32 = 1e-4;

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

/// A row or a batch of rows.
fn rows(v: &Value) -> Vec<Vec<u32>> {
    let arr = v.as_array().unwrap();
    if arr.first().is_some_and(Value::is_array) {
        arr.iter().map(ids).collect()
    } else {
        vec![ids(v)]
    }
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Compares the model's logits with every case of a fixture `cases` array.
fn check_cases(model: &T5Model, cases: &Value, what: &str) {
    for (n, case) in cases.as_array().unwrap().iter().enumerate() {
        let input = rows(&case["input_ids"]);
        let decoder = rows(&case["decoder_input_ids"]);
        let mask = case.get("attention_mask").map(rows);
        let logits = model
            .forward(&input, mask.as_deref(), &decoder, &ForwardCtx::eval())
            .unwrap();
        let logits = logits.to_vec3::<f32>().unwrap();
        let positions = ids(&case["positions"]);
        let expected = case["logits"].as_array().unwrap();
        let batched = input.len() > 1;
        for (k, want) in expected.iter().enumerate() {
            let (row, pos) = if batched {
                (k, positions[0])
            } else {
                (0, positions[k])
            };
            let got = &logits[row][pos as usize];
            let diff = max_abs_diff(got, &floats(want));
            assert!(
                diff < TOLERANCE,
                "{what} case {n} row {row} position {pos}: max |diff| {diff}"
            );
        }
    }
}

#[test]
fn logits_match_transformers() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let model = T5Model::load(&dir).unwrap();
        let fixture = read_json(&dir.join("logits.json"));
        check_cases(&model, &fixture["cases"], variant);
    }
}

#[test]
fn peft_adapter_logits_match() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let mut model = T5Model::load(&dir).unwrap();
        let lora = peft::load(&mut model, &dir.join("adapter"), Some(4)).unwrap();
        assert_eq!((lora.r, lora.alpha), (4, 8.0));
        // q and v of 2 encoder self-attentions, 2 decoder self-attentions, 2 cross-attentions.
        let adapted: Vec<String> = model
            .linears()
            .iter()
            .filter(|l| l.lora().is_some())
            .map(|l| l.path.clone())
            .collect();
        assert_eq!(adapted.len(), 12, "{adapted:?}");
        assert!(adapted.contains(&"decoder.block.1.layer.1.EncDecAttention.v".to_string()));
        let fixture = read_json(&dir.join("logits.json"));
        check_cases(
            &model,
            &fixture["adapter"]["cases"],
            &format!("{variant} + adapter"),
        );
    }
}

#[test]
fn decoder_loss_matches_transformers() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let model = T5Model::load(&dir).unwrap();
        let case = &read_json(&dir.join("logits.json"))["loss"];
        let expected = case["loss"].as_f64().unwrap() as f32;
        let input = rows(&case["input_ids"]);
        let mask = rows(&case["attention_mask"]);
        let labels: Vec<Vec<i64>> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            })
            .collect();
        let out = model
            .labels_loss(&input, Some(&mask), &labels, &ForwardCtx::eval())
            .unwrap();
        let mean = out.loss_sum.to_scalar::<f32>().unwrap() / out.tokens as f32;
        assert!(
            (mean - expected).abs() < TOLERANCE,
            "{variant}: loss {mean} vs {expected}"
        );

        // The same batch through the engine's trait: unpadded prompts and targets.
        let batch: Vec<TrainExample> = input
            .iter()
            .zip(&mask)
            .zip(&labels)
            .map(|((ids, m), l)| TrainExample {
                prompt: ids
                    .iter()
                    .zip(m)
                    .filter(|(_, m)| **m == 1)
                    .map(|(t, _)| *t)
                    .collect(),
                target: l
                    .iter()
                    .filter(|&&t| t != IGNORE)
                    .map(|&t| t as u32)
                    .collect(),
            })
            .collect();
        let out = model
            .loss(
                &batch,
                tandem_experiments::manifest::LossMask::Prompt,
                &ForwardCtx::eval(),
            )
            .unwrap();
        let mean = out.loss_sum.to_scalar::<f32>().unwrap() / out.tokens as f32;
        assert!(
            (mean - expected).abs() < TOLERANCE,
            "{variant}: trait loss {mean} vs {expected}"
        );
    }
}

#[test]
fn tokenizer_loads_and_matches_transformers() {
    for variant in VARIANTS {
        let dir = fixture_dir(variant);
        let (model, tokenizer) = tandem_worker::engine::t5::load(&dir).unwrap();
        assert_eq!(model.config.vocab_size, 304);
        let fixture = read_json(&dir.join("logits.json"));
        for probe in fixture["tokenizer"].as_array().unwrap() {
            let text = probe["text"].as_str().unwrap();
            let plain = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
            let special = tokenizer.encode(text, true).unwrap().get_ids().to_vec();
            assert_eq!(plain, ids(&probe["ids"]), "{variant}: {text:?}");
            assert_eq!(
                special,
                ids(&probe["ids_with_special"]),
                "{variant}: {text:?} with EOS"
            );
        }
    }
}
