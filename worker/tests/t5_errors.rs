//! Bad T5 inputs give errors that name the file and field: missing or truncated weights,
//! unsupported configs, shapes that do not fit, adapters for another model or rank, token ids
//! outside the vocabulary. Also: a sharded copy (index + shard) loads to the same logits.

use std::path::{Path, PathBuf};

use tandem_worker::engine::lora::ForwardCtx;
use tandem_worker::engine::peft;
use tandem_worker::engine::t5::T5Model;

fn fixture(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-t5")
        .join(variant)
}

/// A copy of the relu checkpoint (config + weights) in a temporary folder.
fn copy_of_relu() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("relu").join(name), tmp.path().join(name)).unwrap();
    }
    tmp
}

fn load_err(dir: &Path) -> String {
    T5Model::load(dir).unwrap_err().to_string()
}

fn edit_config(dir: &Path, key: &str, value: serde_json::Value) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn missing_and_truncated_weights_are_named() {
    let tmp = copy_of_relu();
    let weights = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(tmp.path());
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );
    std::fs::remove_file(&weights).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("model.safetensors.index.json"), "{err}");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
}

#[test]
fn unsupported_config_and_mismatched_shapes_are_named() {
    let tmp = copy_of_relu();
    edit_config(tmp.path(), "feed_forward_proj", "gated-silu".into());
    let err = load_err(tmp.path());
    assert!(
        err.contains("config.json") && err.contains("feed_forward_proj"),
        "{err}"
    );

    let tmp = copy_of_relu();
    edit_config(tmp.path(), "d_ff", 128.into());
    let err = load_err(tmp.path());
    assert!(
        err.contains("DenseReluDense.wi.weight") && err.contains("[96, 64]"),
        "{err}"
    );

    let tmp = copy_of_relu();
    edit_config(tmp.path(), "num_layers", 3.into());
    let err = load_err(tmp.path());
    assert!(
        err.contains("missing tensor `encoder.block.2.layer.0.layer_norm.weight`"),
        "{err}"
    );

    let tmp = copy_of_relu();
    edit_config(tmp.path(), "tie_word_embeddings", false.into());
    let err = load_err(tmp.path());
    assert!(err.contains("missing tensor `lm_head.weight`"), "{err}");
}

#[test]
fn adapters_for_another_model_or_rank_are_refused() {
    let mut model = T5Model::load(&fixture("relu")).unwrap();
    let err = peft::load(&mut model, &fixture("relu").join("adapter"), Some(8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("r is 4"),
        "{err}"
    );
    // The gated-gelu adapter is for another base: its shapes, not its recorded name, refuse it (as in PEFT).
    let err = peft::load(&mut model, &fixture("gated-gelu").join("adapter"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter does not fit this model")
            && err.contains("SelfAttention.q.lora_B.weight"),
        "{err}"
    );
    let llama_adapter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama/adapter");
    let err = peft::load(&mut model, &llama_adapter, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}

#[test]
fn bad_token_ids_and_batches_are_input_errors() {
    let model = T5Model::load(&fixture("relu")).unwrap();
    let ctx = ForwardCtx::eval();
    let vocab = model.config.vocab_size as u32;
    let err = model
        .forward(&[vec![5, vocab]], None, &[vec![0]], &ctx)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("token id {vocab}")), "{err}");
    let err = model
        .forward(&[vec![5, 6], vec![7]], None, &[vec![0], vec![0]], &ctx)
        .unwrap_err();
    assert!(err.to_string().contains("row 1 has 1 entries"), "{err}");
    let err = model
        .forward(&[vec![5, 6]], Some(&[vec![0, 0]]), &[vec![0]], &ctx)
        .unwrap_err();
    assert!(err.to_string().contains("masks every token"), "{err}");
    let err = model
        .forward(&[vec![5]], None, &[vec![0], vec![0]], &ctx)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("2 decoder rows for 1 encoder rows"),
        "{err}"
    );
}

#[test]
fn context_limit_from_n_positions_is_enforced() {
    let tmp = copy_of_relu();
    edit_config(tmp.path(), "n_positions", 4.into());
    let model = T5Model::load(tmp.path()).unwrap();
    let ctx = ForwardCtx::eval();
    let err = model
        .forward(&[vec![5, 6, 7, 8, 1]], None, &[vec![0]], &ctx)
        .unwrap_err();
    assert!(err.to_string().contains("n_positions allows 4"), "{err}");
    assert!(
        model
            .forward(&[vec![5, 6, 7, 1]], None, &[vec![0, 5, 6, 7]], &ctx)
            .is_ok()
    );
    let err = model
        .forward(&[vec![5, 1]], None, &[vec![0, 5, 6, 7, 8]], &ctx)
        .unwrap_err();
    assert!(
        err.to_string().contains("decoder sequence reaches 5"),
        "{err}"
    );
}

#[test]
fn sharded_checkpoint_gives_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("gated-gelu");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    // Two shards: the safetensors file is split by tensor name with the safetensors crate.
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &tmp.path().join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        tmp.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let ctx = ForwardCtx::eval();
    let (input, decoder) = ([vec![5u32, 6, 7, 1]], [vec![0u32, 9, 10]]);
    let sharded = T5Model::load(tmp.path())
        .unwrap()
        .forward(&input, None, &decoder, &ctx)
        .unwrap();
    let single = T5Model::load(&src)
        .unwrap()
        .forward(&input, None, &decoder, &ctx)
        .unwrap();
    assert_eq!(
        sharded.to_vec3::<f32>().unwrap(),
        single.to_vec3::<f32>().unwrap()
    );
}

#[test]
fn tokenizer_of_another_model_is_refused() {
    let tmp = copy_of_relu();
    let err = tandem_worker::engine::t5::load(tmp.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("missing"),
        "{err}"
    );
    let llama =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama/tokenizer.json");
    std::fs::copy(llama, tmp.path().join("tokenizer.json")).unwrap();
    let err = tandem_worker::engine::t5::load(tmp.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("400 tokens") && err.contains("vocab_size is 304"),
        "{err}"
    );
}
