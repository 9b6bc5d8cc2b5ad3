//! LLaMA-architecture models (LLaMA 3.x, SmolLM2, TinyLlama): config, weights (safetensors or GGUF), the
//! decoder itself, and loading a model directory or GGUF file together with its tokenizer.

pub mod config;
pub mod gguf;
pub mod model;
pub mod weights;

use std::path::Path;

use tokenizers::Tokenizer;

pub use config::LlamaConfig;
pub use model::Llama;

use crate::engine::error::{EngineError, Result};

/// Loads a LLaMA from a Hugging Face directory (config.json, safetensors, tokenizer.json) or a `.gguf` file,
/// with its tokenizer; checks that the tokenizer fits the model's vocabulary.
pub fn load(path: &Path) -> Result<(Llama, Tokenizer)> {
    let name = model::base_name(path);
    let (model, tokenizer, tok_path) = if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let (mut store, config, tokenizer) = gguf::open(path)?;
        (
            Llama::load(config, &mut store, &name)?,
            tokenizer,
            path.to_path_buf(),
        )
    } else if path.is_dir() {
        let config = LlamaConfig::from_hf_file(&path.join("config.json"))?;
        let mut store = weights::SafetensorsStore::open(path)?;
        let tok_path = path.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(EngineError::tokenizer(
                &tok_path,
                "missing; a model directory needs tokenizer.json",
            ));
        }
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| EngineError::tokenizer(&tok_path, format!("cannot parse: {e}")))?;
        (Llama::load(config, &mut store, &name)?, tokenizer, tok_path)
    } else if !path.exists() {
        return Err(EngineError::io(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    } else {
        return Err(EngineError::weights(
            path,
            "accepted: a Hugging Face model directory or a .gguf file",
        ));
    };
    let tok_vocab = tokenizer.get_vocab_size(true);
    if tok_vocab > model.config.vocab_size {
        return Err(EngineError::tokenizer(
            tok_path,
            format!(
                "the tokenizer has {tok_vocab} tokens but the model's vocab_size is {}; they do not belong together",
                model.config.vocab_size
            ),
        ));
    }
    Ok((model, tokenizer))
}
