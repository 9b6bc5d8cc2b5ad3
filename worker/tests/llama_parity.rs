//! LLaMA parity with Hugging Face transformers/PEFT on the committed fixtures (made by
//! `scripts/parity/make_fixtures.py`): logits, loss, tokenizer, adapter, greedy and beam `generate`, and the
//! SmolLM2 GGUF when it is in the cache.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tandem_experiments::manifest::LossMask;
use tandem_worker::engine::generate::{self, GenerateConfig};
use tandem_worker::engine::llama::{self, Llama};
use tandem_worker::engine::lora::ForwardCtx;
use tandem_worker::engine::model::{Decoder, LanguageModel, TrainExample};
use tandem_worker::engine::peft;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_cases(model: &Llama, cases: &Value, tol: f32) {
    for case in cases.as_array().unwrap() {
        let input = ids(&case["input_ids"]);
        let logits = model
            .sequence_logits(&input)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (k, pos) in case["positions"].as_array().unwrap().iter().enumerate() {
            let want = floats(&case["logits"][k]);
            let got = &logits[pos.as_u64().unwrap() as usize];
            let d = max_diff(got, &want);
            assert!(
                d < tol,
                "case {:?} position {pos}: max |diff| {d}",
                case["text"]
            );
        }
    }
}

#[test]
fn tiny_llama_logits_match_transformers() {
    let dir = fixtures().join("tiny-llama");
    let (model, _) = llama::load(&dir).unwrap();
    check_cases(&model, &json(&dir.join("logits.json"))["cases"], 1e-4);
}

#[test]
fn tiny_llama_tied_sharded_logits_match_transformers() {
    let dir = fixtures().join("tiny-llama-tied");
    let (model, _) = llama::load(&dir).unwrap();
    assert!(model.config.tie_word_embeddings);
    check_cases(&model, &json(&dir.join("logits.json"))["cases"], 1e-4);
}

#[test]
fn tiny_llama_with_peft_adapter_matches_peft() {
    let dir = fixtures().join("tiny-llama");
    let (mut model, _) = llama::load(&dir).unwrap();
    let fx = json(&dir.join("logits.json"));
    let lora = peft::load(&mut model, &dir.join("adapter"), Some(4)).unwrap();
    assert_eq!((lora.r, lora.alpha), (4, 8.0));
    check_cases(&model, &fx["adapter"]["cases"], 1e-4);
}

#[test]
fn tiny_llama_loss_matches_transformers() {
    let dir = fixtures().join("tiny-llama");
    let (model, _) = llama::load(&dir).unwrap();
    let fx = &json(&dir.join("logits.json"))["loss"];
    let mut batch = Vec::new();
    for (row, labels) in fx["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .zip(fx["labels"].as_array().unwrap())
    {
        let row = ids(row);
        let mask: Vec<i64> = labels
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let start = mask.iter().position(|&l| l >= 0).unwrap();
        let end = mask.iter().rposition(|&l| l >= 0).unwrap() + 1;
        batch.push(TrainExample {
            prompt: row[..start].to_vec(),
            target: row[start..end].to_vec(),
        });
    }
    let out = model
        .loss(&batch, LossMask::Prompt, &ForwardCtx::eval())
        .unwrap();
    let mean = out.loss_sum.to_scalar::<f32>().unwrap() / out.tokens as f32;
    let want = fx["loss"].as_f64().unwrap() as f32;
    assert!((mean - want).abs() < 1e-4, "loss {mean} vs {want}");
}

#[test]
fn tiny_llama_tokenizer_matches_transformers() {
    let dir = fixtures().join("tiny-llama");
    let (_, tok) = llama::load(&dir).unwrap();
    for probe in json(&dir.join("logits.json"))["tokenizer"]
        .as_array()
        .unwrap()
    {
        let text = probe["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap().get_ids(),
            ids(&probe["ids"]).as_slice()
        );
        assert_eq!(
            tok.encode(text, true).unwrap().get_ids(),
            ids(&probe["ids_with_special"]).as_slice()
        );
    }
}

#[test]
fn tiny_llama_generate_matches_transformers() {
    let dir = fixtures().join("tiny-llama");
    let (base, _) = llama::load(&dir).unwrap();
    let (mut adapted, _) = llama::load(&dir).unwrap();
    peft::load(&mut adapted, &dir.join("adapter"), None).unwrap();
    for case in json(&dir.join("generate.json"))["cases"]
        .as_array()
        .unwrap()
    {
        let name = case["name"].as_str().unwrap();
        let p = &case["params"];
        let mut cfg = GenerateConfig::greedy(p["max_new_tokens"].as_u64().unwrap() as usize);
        cfg.num_beams = p["num_beams"].as_u64().unwrap_or(1) as usize;
        cfg.length_penalty = p["length_penalty"].as_f64().unwrap_or(1.0);
        cfg.early_stopping = p["early_stopping"].as_bool().unwrap_or(false);
        cfg.repetition_penalty = p["repetition_penalty"].as_f64().unwrap_or(1.0);
        let eos = p["eos_token_id"].as_u64().unwrap() as u32;
        let pad = p["pad_token_id"].as_u64().unwrap() as u32;
        cfg.eos_token_ids = Some(vec![eos]);
        let rows = case["input_ids"].as_array().unwrap();
        let masks = case["attention_mask"].as_array().unwrap();
        let prompts: Vec<Vec<u32>> = rows
            .iter()
            .zip(masks)
            .map(|(r, m)| {
                ids(r)
                    .into_iter()
                    .zip(ids(m))
                    .filter(|&(_, m)| m == 1)
                    .map(|(t, _)| t)
                    .collect()
            })
            .collect();
        let model: &dyn LanguageModel = if name.contains("adapter") {
            &adapted
        } else {
            &base
        };
        let got = generate::generate(model, &prompts, &cfg).unwrap();
        for (k, seq) in case["sequences"].as_array().unwrap().iter().enumerate() {
            let seq = ids(seq);
            let new: Vec<u32> = seq[rows[k].as_array().unwrap().len()..]
                .iter()
                .copied()
                .take_while(|&t| t != eos && t != pad)
                .collect();
            assert_eq!(got[k], new, "case {name}, row {k}");
        }
    }
}

#[test]
fn smollm2_gguf_matches_transformers_gguf_loading() {
    let fx = json(&fixtures().join("smollm2-logits.json"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(fx["model"].as_str().unwrap());
    if !path.exists() {
        eprintln!(
            "skipped: {} is not in the cache (run scripts/fetch-models.sh)",
            path.display()
        );
        return;
    }
    let (model, tok) = llama::load(&path).unwrap();
    for probe in fx["tokenizer"].as_array().unwrap() {
        let text = probe["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false).unwrap().get_ids(),
            ids(&probe["ids"]).as_slice(),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, true).unwrap().get_ids(),
            ids(&probe["ids_with_special"]).as_slice()
        );
    }
    for prompt in fx["prompts"].as_array().unwrap() {
        let input = ids(&prompt["input_ids"]);
        let text = prompt["text"].as_str().unwrap();
        assert_eq!(tok.encode(text, false).unwrap().get_ids(), input.as_slice());
        let (_, logits) = model.start(std::slice::from_ref(&input)).unwrap();
        let row = logits.squeeze(0).unwrap().to_vec1::<f32>().unwrap();
        for entry in prompt["top"].as_array().unwrap() {
            let id = entry["id"].as_u64().unwrap() as usize;
            let want = entry["logit"].as_f64().unwrap() as f32;
            assert!(
                (row[id] - want).abs() < 1e-3,
                "token {id}: {} vs {want}",
                row[id]
            );
        }
        if let Some(all) = prompt.get("last_logits") {
            let d = max_diff(&row, &floats(all));
            assert!(d < 1e-3, "last logits: max |diff| {d}");
        }
    }
}
